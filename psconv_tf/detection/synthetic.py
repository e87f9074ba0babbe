"""A generated detection and segmentation data set in COCO format
(`python -m psconv_tf.detection.synthetic DIR --help`).

Three classes of solid shapes (square, disc, triangle) in random colours,
from 10 to 110 pixels across (COCO's small, medium and large), on textured
backgrounds (random gratings and noise), written as JPEG files, a COCO JSON
per split and, for segmentation, PNG label maps (0 background, k for class
k). Deterministic for a seed; every file is written under a temporary name
and renamed.
"""

import io
import json
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

from psconv_tf.runtime import files

CLASSES = ("square", "disc", "triangle")
SPLITS = (("train", 0), ("val", 1))
PLACEMENT_TRIES = 20


def generate(directory, train_images=400, val_images=100, image_size=192,
             max_objects=4, min_size=10, max_size=110, seed=0):
    """Writes `directory/{train,val}/*.jpg`, `directory/{train,val}_masks/*.png`
    and `directory/annotations/instances_{train,val}.json`; returns the
    paths {split: (annotation_file, image_dir, mask_dir)}."""
    if not 0 < min_size <= max_size < image_size:
        raise ValueError(
            "Object sizes must satisfy 0 < min_size <= max_size < image_size. "
            f"Received: {min_size}, {max_size}, {image_size}"
        )
    paths = {}
    counts = {"train": train_images, "val": val_images}
    for split, offset in SPLITS:
        rng = np.random.default_rng([seed, offset])
        image_dir = os.path.join(directory, split)
        mask_dir = os.path.join(directory, split + "_masks")
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(mask_dir, exist_ok=True)
        images, annotations = [], []
        for index in range(counts[split]):
            image, mask, objects = _sample(rng, image_size, max_objects, min_size, max_size)
            name = f"{index:06d}.jpg"
            _write_image(image, os.path.join(image_dir, name), "JPEG", quality=90)
            _write_image(mask, os.path.join(mask_dir, f"{index:06d}.png"), "PNG")
            images.append(dict(id=index + 1, file_name=name, height=image_size, width=image_size))
            for label, box, area in objects:
                annotations.append(
                    dict(id=len(annotations) + 1, image_id=index + 1, category_id=label + 1,
                         bbox=box, area=area, iscrowd=0)
                )
        document = dict(
            images=images,
            annotations=annotations,
            categories=[dict(id=k + 1, name=name) for k, name in enumerate(CLASSES)],
        )
        annotation_file = os.path.join(directory, "annotations", f"instances_{split}.json")
        os.makedirs(os.path.dirname(annotation_file), exist_ok=True)
        files.write_bytes(annotation_file, json.dumps(document).encode())
        paths[split] = (annotation_file, image_dir, mask_dir)
    return paths


def _background(rng, size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.zeros((size, size, 3), np.float32)
    for _ in range(3):
        angle, frequency = rng.uniform(0, np.pi), rng.uniform(2, 12)
        grating = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)))
        image += grating[..., None] * rng.uniform(10, 35, size=3)
    image += rng.uniform(60, 190, size=3) + rng.normal(0, 12, size=image.shape)
    return image


def _sample(rng, size, max_objects, min_size, max_size):
    canvas = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    objects, taken = [], []
    # Log-uniform sizes: as many small objects as large ones; no overlaps,
    # so that every box is the whole visible object.
    for _ in range(rng.integers(1, max_objects + 1)):
        side = int(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        for _ in range(PLACEMENT_TRIES):
            x0, y0 = (int(v) for v in rng.integers(0, size - side, size=2))
            x1, y1 = x0 + side - 1, y0 + side - 1
            if not any(x0 <= b[2] and b[0] <= x1 and y0 <= b[3] and b[1] <= y1 for b in taken):
                break
        else:
            continue
        taken.append((x0, y0, x1, y1))
        label = int(rng.integers(len(CLASSES)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = _shape(CLASSES[label], x0, y0, x1, y1)
        for target, fill in ((draw, colour), (draw_mask, label + 1)):
            if CLASSES[label] == "disc":
                target.ellipse(shape, fill=fill)
            else:
                target.polygon(shape, fill=fill)
        objects.append((label, [float(x0), float(y0), float(side), float(side)], _area(label, side)))
    return np.asarray(canvas), np.asarray(mask), objects


def _shape(name, x0, y0, x1, y1):
    if name == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    if name == "disc":
        return [x0, y0, x1, y1]
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _area(label, side):
    return float(side * side * {"square": 1.0, "disc": np.pi / 4, "triangle": 0.5}[CLASSES[label]])


def _write_image(array, path, format, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    files.write_bytes(path, buffer.getvalue())


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        description="Writes the generated shapes data set (COCO JSON, JPEG images, PNG masks)."
    )
    parser.add_argument("directory", help="output folder")
    parser.add_argument("--train-images", type=int, default=400, help="default 400")
    parser.add_argument("--val-images", type=int, default=100, help="default 100")
    parser.add_argument("--image-size", type=int, default=192, help="image side; default 192")
    parser.add_argument("--max-objects", type=int, default=4, help="objects per image, at most; default 4")
    parser.add_argument("--min-size", type=int, default=10, help="smallest object side; default 10")
    parser.add_argument("--max-size", type=int, default=110, help="largest object side; default 110")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    args = parser.parse_args(argv)
    try:
        paths = generate(args.directory, args.train_images, args.val_images, args.image_size,
                         args.max_objects, args.min_size, args.max_size, args.seed)
    except ValueError as error:
        parser.error(str(error))
    for split, (annotations, images, masks) in paths.items():
        print(f"{split}: {annotations} {images} {masks}")


if __name__ == "__main__":
    main()
