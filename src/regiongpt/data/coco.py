"""COCO instances JSON: images with their annotations, as regions the processor takes.

Segmentations may be polygons, uncompressed RLE or compressed RLE; they are passed through
unchanged (the processor rasterises every form). Crowd annotations are skipped by default,
as the COCO classification protocol does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regiongpt.data.files import read_json
from regiongpt.errors import InvalidInputError


@dataclass
class CocoImage:
    id: int
    path: Path
    width: int
    height: int
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def regions(self) -> list[dict[str, Any]]:
        """Each annotation as a processor region: its segmentation when it has one, else its box."""
        out = []
        for annotation in self.annotations:
            segmentation = annotation.get("segmentation")
            if segmentation:
                out.append({"segmentation": segmentation})
            else:
                out.append({"bbox": annotation["bbox"], "format": "xywh"})
        return out


def load_coco(instances: str | os.PathLike) -> dict[str, Any]:
    """The parsed instances file, with a clear error when it is not COCO instances JSON."""
    path = Path(instances)
    data = read_json(path)
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise InvalidInputError(f"{path} is not a COCO instances file: it needs 'images', 'annotations' and 'categories'")
    return data


def iter_coco_images(instances: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                     include_crowd: bool = False) -> Iterator[CocoImage]:
    """Images in file order with their (non-crowd) annotations in file order.

    ``images_dir`` defaults to the folder beside the file named ``images``, else the file's folder.
    """
    path = Path(instances)
    data = load_coco(path)
    if images_dir is None:
        images_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    images_dir = Path(images_dir)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for index, annotation in enumerate(data["annotations"]):
        if "image_id" not in annotation or "bbox" not in annotation:
            raise InvalidInputError(f"{path}: annotations[{index}] lacks image_id or bbox")
        if annotation.get("iscrowd", 0) and not include_crowd:
            continue
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for index, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            raise InvalidInputError(f"{path}: images[{index}] lacks id or file_name")
        yield CocoImage(image["id"], images_dir / image["file_name"], int(image.get("width", 0)),
                        int(image.get("height", 0)), by_image.get(image["id"], []))


def category_names(instances: str | os.PathLike) -> dict[int, str]:
    return {c["id"]: c["name"] for c in load_coco(instances)["categories"]}
