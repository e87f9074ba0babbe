"""COCO-format annotations: one JSON of images, annotations and categories.

`read_coco` validates the file up front. A file that cannot be used (missing,
not a regular file, not JSON or nested beyond Python's recursion limit, not an
object with "images", "annotations" and "categories" lists, a bad or duplicate
category, duplicate image ids, no usable image or no usable object left after
skipping) raises `AnnotationError`, one line naming the file and what is
wrong. A bad record (an annotation with a malformed or degenerate box, an
unknown image or category, an image entry with a bad id or size, or without a
readable regular file) is skipped; each is named in `CocoData.skipped` and
logged. Ids must fit int64 and image sides int32 (the dtypes of NumPy and
tf.data that carry them).
"""

import dataclasses
import json
import logging
import math
import os

import numpy as np

logger = logging.getLogger(__name__)

MAX_ID = 2**63 - 1  # ids travel as int64
MAX_SIDE = 2**31 - 1  # image sides as int32 (TensorFlow shapes)


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
        AnnotationError: the file is missing, not JSON, not COCO-shaped, or
            leaves no usable image or object.
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
            if check_files:
                problem = _file_problem(path)
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
    if not images:
        first = f"; the first skipped: {skipped[0][len(source) + 2:]}" if skipped else ""
        raise AnnotationError(
            f"{source}: no usable image ({len(document['images'])} listed){first}"
        )
    if not any(not entry.get("iscrowd") for entries in objects.values() for entry in entries):
        raise AnnotationError(
            f"{source}: no usable object ({len(document['annotations'])} annotations "
            "listed, crowd regions aside): nothing to train or evaluate on"
        )
    records = tuple(
        _record(image_id, path, entry, objects[image_id])
        for image_id, (path, entry) in images.items()
    )
    return CocoData(source, records, categories, tuple(skipped))


def _load_json(source):
    if os.path.exists(source) and not os.path.isdir(source) and not os.path.isfile(source):
        # A FIFO would block the read forever, a device never end it.
        raise AnnotationError(f"{source}: not a regular file")
    try:
        with open(source, encoding="utf-8") as file:
            return _as_object(json.load(file), source)
    except FileNotFoundError:
        raise AnnotationError(f"{source}: annotation file not found") from None
    except RecursionError:
        raise AnnotationError(f"{source}: not usable JSON (nested too deeply)") from None
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
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def _categories(entries, source):
    categories = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")):
            found = entry.get("id") if isinstance(entry, dict) else entry
            raise AnnotationError(
                f"{source}: categories[{index}]: 'id' {_short(found)} is not an "
                f"integer from 0 to {MAX_ID}"
            )
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
        return f"'id' {_short(entry.get('id'))} is not an integer from 0 to {MAX_ID}"
    name = entry.get("file_name")
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.split("/"):
        return f"bad file_name {name!r} (a relative path inside the image folder)"
    for key in ("height", "width"):
        if not _is_id(entry.get(key)) or not 0 < entry[key] <= MAX_SIDE:
            return f"{key} {_short(entry.get(key))} is not an integer from 1 to {MAX_SIDE}"
    return None


def _file_problem(path):
    if not os.path.exists(path):
        return f"image file {path} not found"
    if not os.path.isfile(path):
        return f"image file {path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"image file {path} is not readable"
    return None


def _short(value, limit=40):
    """repr(value), cut to `limit` characters: records may hold anything."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _annotation_problem(entry, images, categories):
    if not isinstance(entry, dict):
        return "not an object"
    image_id, category_id = entry.get("image_id"), entry.get("category_id")
    if not _is_id(image_id) or image_id not in images:
        return f"image_id {_short(image_id)} is not a (readable) image"
    if not _is_id(category_id) or category_id not in categories:
        return f"category_id {_short(category_id)} is not a category"
    box = entry.get("bbox")
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        or not all(math.isfinite(v) for v in box)
    ):
        return f"bbox {_short(box)} is not 4 finite numbers [x, y, width, height]"
    x, y, width, height = box
    if width <= 0 or height <= 0:
        return f"bbox {box!r} has no area"
    _, image = images[image_id]
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
