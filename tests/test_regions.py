"""Region parsing: every user format → the right boolean mask, with clear errors."""

from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from regiongpt.processing.geometry import ImageGeometry
from regiongpt.processing.regions import (
    InvalidRegionError,
    Region,
    RegionClippedWarning,
    parse_region,
    prepare_regions,
    region_box,
    region_to_mask,
)
from regiongpt.processing.rle import encode_rle

H, W = 60, 80


def _rect(x1: int, y1: int, x2: int, y2: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --- boxes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "kwargs"),
    [
        ([10, 5, 30, 25], {}),
        ((10, 5, 20, 20), {"box_format": "xywh"}),
        ([10 / W, 5 / H, 30 / W, 25 / H], {"normalized": True}),
        ({"box": [10, 5, 30, 25]}, {}),
        ({"bbox": [10, 5, 20, 20], "format": "xywh"}, {}),
        ({"bbox": [10 / W, 5 / H, 20 / W, 20 / H], "format": "xywh", "normalized": True}, {}),
        (np.array([10, 5, 30, 25]), {}),
        (torch.tensor([10.0, 5.0, 30.0, 25.0]), {}),
    ],
)
def test_box_forms(region: object, kwargs: dict) -> None:
    np.testing.assert_array_equal(region_to_mask(region, (H, W), **kwargs), _rect(10, 5, 30, 25))


def test_fractional_box_covers_every_overlapped_pixel() -> None:
    parsed = parse_region([10.2, 5.5, 29.1, 24.01], (H, W))
    np.testing.assert_array_equal(parsed.mask, _rect(10, 5, 30, 25))
    assert parsed.box == (10.2, 5.5, 29.1, 24.01) and parsed.kind == "box"


def test_box_partly_outside_is_clipped_with_warning() -> None:
    with pytest.warns(RegionClippedWarning, match=r"<region3>.*clipped to \[70, 0, 80, 10\]"):
        parsed = parse_region([70, -5, 95, 10], (H, W), index=2)
    np.testing.assert_array_equal(parsed.mask, _rect(70, 0, 80, 10))
    assert parsed.box == (70.0, 0.0, 80.0, 10.0)


def test_box_inside_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        region_to_mask([0, 0, W, H], (H, W))


@pytest.mark.parametrize("box", [[100, 10, 120, 20], [-30, -30, -1, -2], [10, 70, 20, 90]])
def test_box_wholly_outside_raises(box: list[int]) -> None:
    with pytest.raises(InvalidRegionError) as err:
        region_to_mask(box, (H, W), index=1)
    message = str(err.value)
    assert "<region2>" in message and "wholly outside" in message and "60x80" in message
    assert str(box[0]) in message


@pytest.mark.parametrize("box", [[30, 5, 10, 25], [10, 5, 10, 25], [10, 25, 30, 25]])
def test_box_without_area_raises(box: list[int]) -> None:
    with pytest.raises(InvalidRegionError, match=r"<region1>.*no area.*x2 > x1.*xyxy vs xywh"):
        region_to_mask(box, (H, W))


def test_box_errors_for_bad_values() -> None:
    with pytest.raises(InvalidRegionError, match="4 finite numbers"):
        region_to_mask({"box": [1, 2, 3]}, (H, W))
    with pytest.raises(InvalidRegionError, match="4 finite numbers"):
        region_to_mask([1, 2, float("nan"), 4], (H, W))
    with pytest.raises(InvalidRegionError, match="unknown box format"):
        region_to_mask([1, 2, 3, 4], (H, W), box_format="cxcywh")


# --- polygons ---------------------------------------------------------------------------

POLYGONS = [
    [[10.3, 5.2, 70.8, 12.1, 50.5, 55.7, 5.1, 40.4]],
    [[10, 10, 30, 10, 30, 20, 10, 20], [40, 30, 60, 35, 45, 50]],  # two parts, united
]


@pytest.mark.parametrize("polygons", POLYGONS)
def test_coco_polygons_agree_with_pycocotools(polygons: list[list[float]]) -> None:
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, H, W))).astype(bool)
    for region in (polygons, {"polygon": polygons}, {"segmentation": polygons}):
        mask = region_to_mask(region, (H, W))
        assert _iou(mask, expected) > 0.97


def test_axis_aligned_polygon_equals_box() -> None:
    square = [[10, 10], [30, 10], [30, 20], [10, 20]]
    np.testing.assert_array_equal(region_to_mask(square, (H, W)), _rect(10, 10, 30, 20))
    flat = {"polygon": [10, 10, 30, 10, 30, 20, 10, 20]}
    np.testing.assert_array_equal(region_to_mask(flat, (H, W)), _rect(10, 10, 30, 20))


def test_polygon_box_is_tight_box_of_mask() -> None:
    parsed = parse_region([[10, 10], [30, 10], [30, 20]], (H, W))
    assert parsed.kind == "polygon" and parsed.box == region_box(parsed.mask)


def test_sliver_polygon_is_not_lost() -> None:
    assert region_to_mask([[5, 5], [5.2, 5.1], [5.1, 5.3]], (H, W)).sum() >= 1


@pytest.mark.parametrize("polygon", [[[1, 2], [3, 4]], [[1, 2, 3, 4]], {"polygon": []}, [[1, 2, 3, 4, 5]]])
def test_degenerate_polygons_raise(polygon: object) -> None:
    with pytest.raises(InvalidRegionError, match="<region1>"):
        region_to_mask(polygon, (H, W))


def test_polygon_partly_outside_warns_and_wholly_outside_raises() -> None:
    with pytest.warns(RegionClippedWarning, match="polygon"):
        mask = region_to_mask([[70, 50], [100, 50], [100, 70]], (H, W))
    assert mask.any()
    with pytest.warns(RegionClippedWarning), pytest.raises(InvalidRegionError, match="covers no pixel"):
        region_to_mask([[100, 100], [120, 100], [120, 120]], (H, W))


# --- RLE --------------------------------------------------------------------------------


def _random_blob() -> np.ndarray:
    rng = np.random.default_rng(3)
    mask = np.zeros((H, W), dtype=bool)
    mask[12:40, 20:70] = True
    mask &= rng.random((H, W)) > 0.2
    return mask


def test_compressed_rle_from_pycocotools() -> None:
    blob = _random_blob()
    rle = coco_mask.encode(np.asfortranarray(blob.astype(np.uint8)))  # counts are bytes
    np.testing.assert_array_equal(region_to_mask(rle, (H, W)), blob)
    as_text = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    np.testing.assert_array_equal(region_to_mask({"segmentation": as_text}, (H, W)), blob)


def test_uncompressed_rle_matches_pycocotools() -> None:
    blob = _random_blob()
    rle = encode_rle(blob, compressed=False)
    assert isinstance(rle["counts"], list)
    expected = coco_mask.decode(coco_mask.frPyObjects(rle, H, W)).astype(bool)
    np.testing.assert_array_equal(expected, blob)
    parsed = parse_region({"segmentation": rle, "bbox": [0, 0, 1, 1]}, (H, W))  # COCO ann: mask wins
    np.testing.assert_array_equal(parsed.mask, blob)
    assert parsed.kind == "rle" and parsed.box == region_box(blob)


def test_rle_size_mismatch_names_both_sizes() -> None:
    rle = encode_rle(_rect(1, 1, 5, 5, size=(30, 40)))
    with pytest.raises(InvalidRegionError, match=r"<region4>.*30x40.*60x80"):
        region_to_mask(rle, (H, W), index=3)


def test_corrupt_rle_raises_invalid_region() -> None:
    with pytest.raises(InvalidRegionError, match="invalid COCO RLE"):
        region_to_mask({"size": [H, W], "counts": [5, 5]}, (H, W))


# --- masks ------------------------------------------------------------------------------


def test_mask_forms(tmp_path: Path) -> None:
    blob = _random_blob()
    png = tmp_path / "mask.png"
    Image.fromarray(blob.astype(np.uint8) * 255).save(png)
    forms = [
        blob,
        blob.astype(np.uint8),
        blob.astype(np.uint8) * 255,
        blob.astype(np.float32),
        torch.from_numpy(blob),
        torch.from_numpy(blob.astype(np.float32))[None],  # (1, h, w)
        Image.fromarray(blob),
        Image.fromarray(blob.astype(np.uint8) * 255).convert("RGB"),
        png,
        str(png),
        {"mask": str(png)},
        {"mask": blob},
    ]
    for form in forms:
        parsed = parse_region(form, (H, W))
        np.testing.assert_array_equal(parsed.mask, blob, err_msg=type(form).__name__)
        assert parsed.kind == "mask"


def test_mask_wrong_size_names_expected_and_actual() -> None:
    with pytest.raises(InvalidRegionError, match=r"<region1>.*59x80.*60x80"):
        region_to_mask(np.ones((59, 80), dtype=bool), (H, W))


def test_empty_mask_raises() -> None:
    with pytest.raises(InvalidRegionError, match="empty"):
        region_to_mask(np.zeros((H, W), dtype=np.uint8), (H, W))


def test_missing_mask_file_raises(tmp_path: Path) -> None:
    with pytest.raises(InvalidRegionError, match="does not exist"):
        region_to_mask(str(tmp_path / "nope.png"), (H, W))


def test_unsupported_region_raises() -> None:
    with pytest.raises(InvalidRegionError, match="unsupported region"):
        region_to_mask(42, (H, W))
    with pytest.raises(InvalidRegionError, match="needs one of the keys"):
        region_to_mask({"shape": [1, 2]}, (H, W))


def test_region_box_is_pixel_edge_tight_box() -> None:
    assert region_box(_rect(3, 4, 10, 12)) == (3.0, 4.0, 10.0, 12.0)
    with pytest.raises(InvalidRegionError):
        region_box(np.zeros((3, 3), dtype=bool))


# --- prepare_regions --------------------------------------------------------------------


def test_prepare_regions_shapes_and_boxes() -> None:
    geometry = ImageGeometry.build((H, W), resize_to=(30, 40))
    regions = [[10.5, 5, 30, 25], {"polygon": [[0, 0], [20, 0], [20, 10], [0, 10]]}, _rect(40, 20, 80, 60)]
    out = prepare_regions(regions, (H, W), geometry, return_original_masks=True)
    assert out["masks"].shape == (3, 30, 40) and out["masks"].dtype == np.float32
    assert out["boxes"].shape == (3, 4) and out["boxes"].dtype == np.float32
    assert out["original_masks"].shape == (3, H, W) and out["original_masks"].dtype == bool
    np.testing.assert_allclose(out["boxes"], [[5.25, 2.5, 15, 12.5], [0, 0, 10, 5], [20, 10, 40, 30]])
    np.testing.assert_allclose(out["masks"][2].sum(), 20 * 20)


def test_prepare_regions_with_no_regions() -> None:
    geometry = ImageGeometry.build((H, W), resize_to=(30, 40))
    for empty in (None, []):
        out = prepare_regions(empty, (H, W), geometry)
        assert out["masks"].shape == (0, 30, 40) and out["boxes"].shape == (0, 4)
        assert out["masks"].dtype == np.float32 and out["boxes"].dtype == np.float32


def test_prepare_regions_one_pixel_region_has_weight() -> None:
    geometry = ImageGeometry.build((1000, 800), pad_to_square=True, resize_to=(24, 24))
    out = prepare_regions([[400, 500, 401, 501]], (1000, 800), geometry)
    assert out["masks"][0].sum() > 0


def test_prepare_regions_names_the_bad_region_and_checks_geometry() -> None:
    geometry = ImageGeometry.identity((H, W))
    with pytest.raises(InvalidRegionError, match="<region2>"):
        prepare_regions([[1, 1, 5, 5], [5, 5, 1, 1]], (H, W), geometry)
    with pytest.raises(ValueError, match="geometry"):
        prepare_regions([], (H + 1, W), geometry)
    with pytest.raises(InvalidRegionError, match="list"):
        prepare_regions({"box": [1, 1, 5, 5]}, (H, W), geometry)


def test_region_instances_pass_through() -> None:
    parsed = parse_region([10, 5, 30, 25], (H, W))
    again = parse_region(parsed, (H, W))
    assert isinstance(again, Region) and again.box == parsed.box


@pytest.mark.parametrize("name", ["geometry.py", "regions.py"])
def test_remote_code_files_import_only_allowed_modules(name: str) -> None:
    """These files travel beside checkpoints; regiongpt is not installed there."""
    source = (Path(__file__).parents[1] / "src" / "regiongpt" / "processing" / name).read_text()
    allowed = {"numpy", "PIL", "torch", "transformers", "__future__"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:
                continue  # relative: a sibling file, allowed
            roots = {node.module.split(".")[0]}
        else:
            continue
        bad = {r for r in roots if r not in allowed and r not in sys.stdlib_module_names}
        assert not bad, f"{name} imports {bad}"
