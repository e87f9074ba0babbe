"""COCO-format annotations: one JSON of images, annotations and categories.

`read_coco` validates the file up front. A file that cannot be used (missing,
not JSON, not an object with "images", "annotations" and "categories" lists,
duplicate ids) raises `AnnotationError`, one line naming the file and what
is wrong. A bad record (an annotation with a malformed or degenerate box, an
unknown image or category, an image entry without a readable file) is
skipped; each is named in `CocoData.skipped` and logged.
"""

import dataclasses
import json
import logging
import math
import os

import numpy as np

logger = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """An annotation file that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Category:
    id: int
    name: str


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image: its file and its objects, boxes as [x0, y0, x1, y1] pixels."""

    id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray  # (n, 4) float32, xyxy
    category_ids: np.ndarray  # (n,) int64, COCO category ids
    iscrowd: np.ndarray  # (n,) bool
    areas: np.ndarray  # (n,) float32, the annotation's "area" (else the box's)


@dataclasses.dataclass(frozen=True)
class CocoData:
    """A read annotation file: `records` in file order, `categories` sorted
    by id, `skipped` one line per skipped record, `source` the JSON path."""

    source: str
    records: tuple
    categories: tuple
    skipped: tuple

    @property
    def category_ids(self):
        return [category.id for category in self.categories]

    def label_of(self):
        """{COCO category id: contiguous label 0..C-1}."""
        return {category.id: label for label, category in enumerate(self.categories)}


def read_coco(annotation_file, image_dir, check_files=True):
    """Reads a COCO-format JSON; image `file_name`s are relative to `image_dir`.

    Args:
        annotation_file: path of the JSON.
        image_dir: folder of the images.
        check_files: skip (and name) images whose file does not exist.

    Returns:
        `CocoData`.

    Raises:
        AnnotationError: the file is missing, not JSON, or not COCO-shaped.
    """
    source = os.fspath(annotation_file)
    document = _load_json(source)
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise AnnotationError(f"{source}: no {key!r} list (not a COCO annotation file)")
    categories = _categories(document["categories"], source)
    known = {category.id for category in categories}
    skipped = []
    images = {}
    for index, entry in enumerate(document["images"]):
        problem = _image_problem(entry)
        if problem is None and entry["id"] in images:
            raise AnnotationError(f"{source}: images[{index}]: duplicate image id {entry['id']}")
        if problem is None:
            path = os.path.join(os.fspath(image_dir), entry["file_name"])
            if check_files and not os.path.isfile(path):
                problem = f"image file {path} not found"
        if problem is not None:
            skipped.append(f"{source}: images[{index}]: {problem}; image skipped")
            continue
        images[entry["id"]] = (path, entry)
    objects = {image_id: [] for image_id in images}
    for index, entry in enumerate(document["annotations"]):
        problem = _annotation_problem(entry, images, known)
        if problem is not None:
            skipped.append(f"{source}: annotations[{index}]: {problem}; annotation skipped")
            continue
        objects[entry["image_id"]].append(entry)
    for line in skipped:
        logger.warning(line)
    records = tuple(
        _record(image_id, path, entry, objects[image_id])
        for image_id, (path, entry) in images.items()
    )
    return CocoData(source, records, categories, tuple(skipped))


def _load_json(source):
    try:
        with open(source, encoding="utf-8") as file:
            return _as_object(json.load(file), source)
    except FileNotFoundError:
        raise AnnotationError(f"{source}: annotation file not found") from None
    except json.JSONDecodeError as error:
        raise AnnotationError(
            f"{source}: not valid JSON ({error.msg} at line {error.lineno}, "
            f"column {error.colno})"
        ) from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{source}: not UTF-8 text") from None
    except IsADirectoryError:
        raise AnnotationError(f"{source}: is a directory, not a JSON file") from None


def _as_object(document, source):
    if not isinstance(document, dict):
        raise AnnotationError(f"{source}: top level is {type(document).__name__}, not an object")
    return document


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _categories(entries, source):
    categories = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")):
            raise AnnotationError(f"{source}: categories[{index}]: no integer 'id'")
        if entry["id"] in categories:
            raise AnnotationError(f"{source}: categories[{index}]: duplicate id {entry['id']}")
        categories[entry["id"]] = Category(entry["id"], str(entry.get("name", entry["id"])))
    if not categories:
        raise AnnotationError(f"{source}: no categories")
    return tuple(categories[key] for key in sorted(categories))


def _image_problem(entry):
    if not isinstance(entry, dict):
        return "not an object"
    if not _is_id(entry.get("id")):
        return "no integer 'id'"
    name = entry.get("file_name")
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.split("/"):
        return f"bad file_name {name!r} (a relative path inside the image folder)"
    for key in ("height", "width"):
        if not _is_id(entry.get(key)) or entry[key] <= 0:
            return f"{key} {entry.get(key)!r} is not a positive integer"
    return None


def _annotation_problem(entry, images, categories):
    if not isinstance(entry, dict):
        return "not an object"
    if entry.get("image_id") not in images:
        return f"image_id {entry.get('image_id')!r} is not a (readable) image"
    if entry.get("category_id") not in categories:
        return f"category_id {entry.get('category_id')!r} is not a category"
    box = entry.get("bbox")
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        or not all(math.isfinite(v) for v in box)
    ):
        return f"bbox {box!r} is not 4 finite numbers [x, y, width, height]"
    x, y, width, height = box
    if width <= 0 or height <= 0:
        return f"bbox {box!r} has no area"
    _, image = images[entry["image_id"]]
    if x < 0 or y < 0 or x + width > image["width"] + 1 or y + height > image["height"] + 1:
        return f"bbox {box!r} lies outside the {image['width']}x{image['height']} image"
    return None


def _record(image_id, path, image, annotations):
    boxes = np.array(
        [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
         for a in annotations],
        dtype=np.float32,
    ).reshape(-1, 4)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, image["width"])
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, image["height"])
    return ImageRecord(
        id=image_id,
        path=path,
        height=image["height"],
        width=image["width"],
        boxes=boxes,
        category_ids=np.array([a["category_id"] for a in annotations], dtype=np.int64),
        iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool),
        areas=np.array([_area(a) for a in annotations], dtype=np.float32),
    )


def _area(annotation):
    area = annotation.get("area")
    if isinstance(area, (int, float)) and not isinstance(area, bool) and math.isfinite(area) and area > 0:
        return float(area)
    return float(annotation["bbox"][2] * annotation["bbox"][3])
