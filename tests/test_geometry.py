"""ImageGeometry / geometry_for: regions must follow exactly the pixels' geometry."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from regiongpt.processing.geometry import ImageGeometry, _axis_coverage, geometry_for, resize_output_size


def _processors() -> dict[str, object]:
    """The processor settings RegionGPT meets (small sizes keep the test fast)."""
    return {
        "llava_crop": LlavaImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        "llava_pad": LlavaImageProcessorPil(
            do_pad=True, size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ),
        "clip_336": CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        "fixed_hw": CLIPImageProcessorPil(size={"height": 200, "width": 300}, do_center_crop=False),
        "crop_bigger_than_image": CLIPImageProcessorPil(
            size={"height": 100, "width": 150}, crop_size={"height": 224, "width": 224}
        ),
    }


def _run_processor(processor: object, image: np.ndarray) -> np.ndarray:
    """Processed pixels (C, H, W) in 0..255, without rescale/normalise."""
    out = processor(Image.fromarray(image), do_rescale=False, do_normalize=False, return_tensors="np")
    return out["pixel_values"][0]


def _random_box(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """An integer box at least 30% of the image on each side, so edges dominate little."""
    bw, bh = int(rng.integers(int(0.3 * w), int(0.7 * w))), int(rng.integers(int(0.3 * h), int(0.7 * h)))
    x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    return x1, y1, x1 + bw, y1 + bh


def _tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


@pytest.mark.parametrize("name", list(_processors()))
def test_box_drawn_on_image_matches_transformed_mask(name: str) -> None:
    """A white box drawn on the image lands where transform_mask / map_box say it does."""
    processor = _processors()[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for _ in range(3):
        h, w = (int(v) for v in rng.integers(120, 640, 2))
        if h == w:
            w += 7
        x1, y1, x2, y2 = _random_box(rng, h, w)
        image = np.zeros((h, w, 3), dtype=np.uint8)
        image[y1:y2, x1:x2] = 255
        pixels = _run_processor(processor, image)
        geometry = geometry_for(processor, (h, w))
        assert geometry.output_size == pixels.shape[1:]

        bright = pixels.min(axis=0) > 127.5  # pad colour (CLIP mean) stays below in the blue channel
        mask = np.zeros((h, w), dtype=bool)
        mask[y1:y2, x1:x2] = True
        predicted = geometry.transform_mask(mask) > 0.5
        iou = (bright & predicted).sum() / (bright | predicted).sum()
        assert iou > 0.9, (name, (h, w), iou)
        mapped = geometry.map_box([x1, y1, x2, y2])
        assert np.abs(mapped - _tight_box(bright)).max() <= 1.0, (name, mapped, _tight_box(bright))


def test_llava_pad_offsets_match_pad_to_square() -> None:
    geometry = geometry_for(LlavaImageProcessorPil(do_pad=True), (101, 300))
    assert geometry.pad_offset == ((300 - 101) // 2, 0)
    assert geometry.padded_size == (300, 300)
    geometry = geometry_for(LlavaImageProcessorPil(do_pad=True), (300, 101))
    assert geometry.pad_offset == (0, (300 - 101) // 2)


def test_resize_sizes_follow_transformers() -> None:
    assert resize_output_size((480, 640), {"shortest_edge": 336}) == (336, 448)
    assert resize_output_size((641, 480), {"shortest_edge": 336}) == (448, 336)  # int() truncates
    assert resize_output_size((480, 640), {"height": 224, "width": 300}) == (224, 300)


def test_center_crop_of_small_image_pads_like_transformers() -> None:
    geometry = ImageGeometry.build((100, 150), crop_size=(224, 224))
    assert geometry.output_size == (224, 224)
    assert geometry.crop_offset == (-62, -37)  # ceil((224 - size) / 2) zeros before the image


def test_map_points_and_box_are_affine_per_axis() -> None:
    geometry = ImageGeometry.build((200, 400), pad_to_square=True, resize_to=(100, 100), crop_size=(80, 80))
    # padded 400x400 with the image at top=100; scale 0.25; crop offset 10
    np.testing.assert_allclose(geometry.map_points([[0, 0], [400, 200]]), [[-10, 15], [90, 65]])
    np.testing.assert_allclose(geometry.map_box([0, 0, 400, 200]), [0, 15, 80, 65])
    np.testing.assert_allclose(geometry.map_box([0, 0, 400, 200], clip=False), [-10, 15, 90, 65])


def test_transform_mask_is_area_coverage() -> None:
    geometry = ImageGeometry.build((4, 4), resize_to=(2, 2))
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    mask[2:, 2:] = True
    np.testing.assert_allclose(geometry.transform_mask(mask), [[0.25, 0], [0, 1]])
    enlarge = ImageGeometry.build((2, 2), resize_to=(4, 4))
    np.testing.assert_allclose(enlarge.transform_mask(np.eye(2, dtype=bool)), np.kron(np.eye(2), np.ones((2, 2))))


def test_transform_mask_total_weight_is_scaled_area() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((90, 120)) > 0.6
    geometry = ImageGeometry.build((90, 120), resize_to=(45, 50))
    out = geometry.transform_mask(mask)
    assert out.dtype == np.float32 and out.shape == (45, 50)
    np.testing.assert_allclose(out.sum(), mask.sum() * (45 / 90) * (50 / 120), rtol=1e-5)


def _full_resampling(geometry: ImageGeometry, mask: np.ndarray) -> np.ndarray:
    """The box filter onto every output pixel (what transform_mask computes only where the region is)."""
    rows = _axis_coverage(mask.astype(np.float64), geometry._edges(axis=0), axis=0)
    return np.clip(_axis_coverage(rows, geometry._edges(axis=1), axis=1), 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("build", [
    {"resize_to": (48, 64)},                            # shrink
    {"resize_to": (150, 200)},                          # enlarge
    {"pad_to_square": True, "resize_to": (56, 56)},     # LLaVA pad, then shrink
    {"resize_to": (60, 80), "crop_size": (60, 60)},     # center crop cuts the sides
    {"resize_to": (40, 50), "crop_size": (64, 64)},     # crop bigger than the image: zero borders
    {"resize_to": (40, 50), "pad_to": (48, 64)},        # trailing pad
])
def test_transform_mask_equals_full_resampling(build: dict) -> None:
    """Resampling only the output pixels the region's box meets gives the full resampling's values,
    value for value, for regions anywhere (edges, corners, one pixel, soft, cut off by a crop)."""
    rng = np.random.default_rng(1)
    geometry = ImageGeometry.build((75, 100), **build)
    for trial in range(40):
        mask = np.zeros((75, 100))
        y0, x0 = int(rng.integers(0, 75)), int(rng.integers(0, 100))
        y1, x1 = int(rng.integers(y0 + 1, 76)), int(rng.integers(x0 + 1, 101))
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) * (rng.random((y1 - y0, x1 - x0)) > 0.3)
        if not mask.any():
            continue
        expected = _full_resampling(geometry, mask)
        if expected.sum() < 1e-4:  # cropped away: the nearest-pixel fallback, tested on its own
            continue
        np.testing.assert_array_equal(geometry.transform_mask(mask), expected, err_msg=f"trial {trial}")


@pytest.mark.parametrize("name", list(_processors()))
def test_one_pixel_region_keeps_positive_weight(name: str) -> None:
    geometry = geometry_for(_processors()[name], (1000, 800))
    for y, x in [(500, 400), (0, 0), (999, 799), (3, 790)]:  # corners may be cropped away
        mask = np.zeros((1000, 800), dtype=bool)
        mask[y, x] = True
        out = geometry.transform_mask(mask)
        assert out.sum() > 0, (name, y, x)
        assert np.isfinite(out).all()


def test_tiny_region_cropped_away_falls_back_to_nearest_pixel() -> None:
    geometry = ImageGeometry.build((100, 300), resize_to=(10, 30), crop_size=(10, 10))
    mask = np.zeros((100, 300), dtype=bool)
    mask[50, 5] = True  # in the left third, cut off by the center crop
    out = geometry.transform_mask(mask)
    assert out.sum() == 1.0 and out[5, 0] == 1.0


def test_transform_mask_accepts_uint8_and_rejects_wrong_size() -> None:
    geometry = ImageGeometry.build((4, 4), resize_to=(2, 2))
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2, :2] = 255
    np.testing.assert_allclose(geometry.transform_mask(mask), [[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="original image"):
        geometry.transform_mask(np.ones((3, 4), dtype=bool))


def test_geometry_for_reads_call_overrides() -> None:
    processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    geometry = geometry_for(processor, (300, 600), do_center_crop=False)
    assert geometry.output_size == (224, 448)
    with pytest.raises(TypeError, match="unknown overrides"):
        geometry_for(processor, (300, 600), do_fancy=True)


def test_identity_geometry() -> None:
    geometry = ImageGeometry.identity((5, 7))
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:6] = True
    np.testing.assert_array_equal(geometry.transform_mask(mask), mask.astype(np.float32))
    np.testing.assert_allclose(geometry.map_box([2, 1, 6, 3]), [2, 1, 6, 3])
