"""COCO-format reading, pycocotools evaluation against hand-computed APs,
the generated data set and the input pipeline."""

import json
import math
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from psconv_tf.detection import AnnotationError
from psconv_tf.detection import evaluate_boxes
from psconv_tf.detection import ground_truth
from psconv_tf.detection import input_pipeline
from psconv_tf.detection import read_coco
from psconv_tf.detection import synthetic

# COCO interpolates precision at the 101 recalls 0, 0.01, ..., 1.
RECALL_POINTS = 101


def _truth(boxes, image_size=200):
    """One image, category 1, boxes [x, y, w, h]."""
    return dict(
        images=[dict(id=1, height=image_size, width=image_size)],
        annotations=[dict(id=k + 1, image_id=1, category_id=1, bbox=list(map(float, b)),
                          area=float(b[2] * b[3]), iscrowd=0) for k, b in enumerate(boxes)],
        categories=[dict(id=1, name="thing")],
    )


def _detection(box, score):
    return dict(image_id=1, category_id=1, bbox=list(map(float, box)), score=score)


def test_ap_of_a_hit_a_miss_and_a_false_positive():
    # Two objects (50x50: medium); the best detection is exact, the second
    # hits nothing. Precision 1 up to recall 1/2, then nothing: at every
    # threshold AP = (recall points 0..0.50) / 101 = 51 / 101.
    truth = _truth([[10, 10, 50, 50], [120, 120, 50, 50]])
    detections = [_detection([10, 10, 50, 50], 0.9), _detection([60, 130, 30, 30], 0.8)]
    results = evaluate_boxes(truth, detections)
    expected = 51 / RECALL_POINTS
    for name in ("AP", "AP50", "AP75", "AP_M"):
        assert results[name] == pytest.approx(expected, abs=1e-9), name
    assert math.isnan(results["AP_S"]) and math.isnan(results["AP_L"])  # no such objects


def test_ap_counts_the_iou_thresholds_a_box_passes():
    # One 100x100 object (large), one detection shifted by 24 pixels:
    # IoU = 76*100 / (2*100*100 - 76*100) = 0.6129..., a hit at the
    # thresholds 0.50, 0.55, 0.60 and a miss at the 7 above: AP = 3/10.
    truth = _truth([[50, 50, 100, 100]])
    results = evaluate_boxes(truth, [_detection([74, 50, 100, 100], 0.5)])
    assert results["AP"] == pytest.approx(0.3, abs=1e-9)
    assert results["AP50"] == pytest.approx(1.0) and results["AP75"] == 0.0
    assert results["AP_L"] == pytest.approx(0.3, abs=1e-9)


def test_no_detections_score_zero():
    results = evaluate_boxes(_truth([[10, 10, 20, 20]]), [])
    assert results["AP"] == 0.0 and results["AP_S"] == 0.0


def _write(tmp_path, document, images=("a.jpg",)):
    for name in images:
        Image.new("RGB", (64, 48)).save(tmp_path / name)
    path = tmp_path / "ann.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def _document(**changes):
    document = dict(
        images=[dict(id=1, file_name="a.jpg", height=48, width=64)],
        annotations=[dict(id=1, image_id=1, category_id=3, bbox=[4, 4, 20, 10])],
        categories=[dict(id=3, name="c")],
    )
    document.update(changes)
    return document


def test_reads_a_coco_file(tmp_path):
    data = read_coco(_write(tmp_path, _document()), tmp_path)
    (record,) = data.records
    np.testing.assert_array_equal(record.boxes, [[4, 4, 24, 14]])
    assert data.label_of() == {3: 0} and data.skipped == ()
    # Back to the COCO dict that pycocotools scores.
    truth = ground_truth(data.records, data.categories)
    assert truth["annotations"][0]["bbox"] == [4.0, 4.0, 20.0, 10.0]


@pytest.mark.parametrize("content, message", [
    (None, "annotation file not found"),
    ('{"images": [', "not valid JSON"),
    ("[1, 2]", "top level is list"),
    (json.dumps(_document(annotations=None)), "no 'annotations' list"),
    (json.dumps(_document(categories=[])), "no categories"),
    (json.dumps(_document(categories=[dict(id=1), dict(id=1)])), r"categories\[1\]: duplicate id 1"),
    ("[" * 100_000 + "]" * 100_000, r"nested too deeply"),
    ('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", r"nested too deeply"),
    (json.dumps(_document(categories=[dict(id=2**70)])), r"categories\[0\]: 'id' 1180591620717411303424 is not"),
    (json.dumps(_document(annotations=[])), "no usable object"),
    (json.dumps(_document(annotations=[dict(id=1, image_id=1, category_id=3, bbox=[4, 4, 20, 10],
                                            iscrowd=1)])), "no usable object"),
    (json.dumps(_document(images=[])), r"no usable image \(0 listed\)"),
    (json.dumps(_document(images=[dict(id=1, file_name="gone.jpg", height=48, width=64),
                                  dict(id=2, file_name="lost.jpg", height=48, width=64)])),
     r"no usable image \(2 listed\); the first skipped: images\[0\]: image file .*gone.jpg not found"),
    ("fifo", "not a regular file"),
], ids=["missing", "not-json", "list", "no-annotations-key", "no-categories", "duplicate-category",
        "deep-list", "deep-object", "category-id-2**70", "no-annotations", "crowd-only", "no-images",
        "all-files-missing", "fifo"])
def test_unusable_files_get_one_line_errors(tmp_path, content, message):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    path = tmp_path / "ann.json"
    if content == "fifo":
        os.mkfifo(path)  # opened, it would block until a writer comes
        threading.Timer(5, _unblock, [path]).start()  # fail, not hang, if it is opened
    elif content is not None:
        path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as error:
        read_coco(path, tmp_path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def _unblock(fifo):
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # nobody reads it
        pass


def test_bad_records_are_skipped_and_named(tmp_path):
    annotations = [
        dict(id=1, image_id=1, category_id=3, bbox=[4, 4, 20, 10]),
        dict(id=2, image_id=1, category_id=3, bbox=[4, 4, -5, 10]),
        dict(id=3, image_id=9, category_id=3, bbox=[4, 4, 5, 5]),
        dict(id=4, image_id=1, category_id=7, bbox=[4, 4, 5, 5]),
        dict(id=5, image_id=1, category_id=3, bbox="4 4 5 5"),
        dict(id=6, image_id=1, category_id=3, bbox=[60, 40, 30, 30]),
    ]
    annotations += [
        dict(id=7, image_id=[1], category_id=3, bbox=[4, 4, 5, 5]),  # unhashable
        dict(id=8, image_id=1, category_id={"3": 3}, bbox=[4, 4, 5, 5]),
        dict(id=9, image_id=2**70, category_id=3, bbox=[4, 4, 5, 5]),
        dict(id=10, image_id=1, category_id=3, bbox=[0.5] * 100_000),
    ]
    images = [dict(id=1, file_name="a.jpg", height=48, width=64),
              dict(id=2, file_name="gone.jpg", height=48, width=64),
              dict(id=3, file_name="../etc/passwd", height=48, width=64),
              dict(id=2**70, file_name="a.jpg", height=48, width=64),
              dict(id=5, file_name="a.jpg", height=2**40, width=64),
              dict(id=6, file_name="folder", height=48, width=64)]
    (tmp_path / "folder").mkdir()
    path = _write(tmp_path, _document(images=images, annotations=annotations))
    data = read_coco(path, tmp_path)
    assert len(data.records) == 1 and len(data.records[0].boxes) == 1
    reasons = "\n".join(data.skipped)
    for fragment in ("annotations[1]: bbox [4, 4, -5, 10] has no area",
                     "annotations[2]: image_id 9", "annotations[3]: category_id 7",
                     "annotations[4]: bbox '4 4 5 5'", "annotations[5]: bbox [60, 40, 30, 30] lies outside",
                     "images[1]: image file", "images[2]: bad file_name '../etc/passwd'",
                     "images[3]: 'id' 1180591620717411303424 is not an integer",
                     "images[4]: height 1099511627776 is not an integer from 1 to",
                     "images[5]: image file", "folder is not a regular file",
                     "annotations[6]: image_id [1] is not", "annotations[7]: category_id {'3': 3}",
                     "annotations[8]: image_id 1180591620717411303424",
                     "annotations[9]: bbox [0.5, 0.5"):
        assert fragment in reasons, fragment
    assert max(len(line) for line in data.skipped) < 300
    assert all(str(path) in line for line in data.skipped)


def test_generated_data_set_matches_its_annotations(tmp_path):
    paths = synthetic.generate(tmp_path, train_images=6, val_images=2, image_size=96,
                               min_size=10, max_size=40, seed=3)
    annotation_file, image_dir, mask_dir = paths["train"]
    data = read_coco(annotation_file, image_dir)
    assert len(data.records) == 6 and not data.skipped
    assert [c.name for c in data.categories] == list(synthetic.CLASSES)
    for record in data.records:
        mask = np.asarray(Image.open(f"{mask_dir}/{record.path[-10:-4]}.png"))
        for box, category in zip(record.boxes.astype(int), record.category_ids):
            x0, y0, x1, y1 = box
            # The object's centre is painted with its class, outside its box nothing of it.
            assert mask[(y0 + y1) // 2, (x0 + x1) // 2] == category
            inside = mask[y0:y1, x0:x1] == category
            assert inside.sum() == (mask == category).sum() - _others(mask, data, record, box, category)


def _others(mask, data, record, box, category):
    """Pixels of the same class that belong to the image's other objects."""
    total = 0
    for other, other_category in zip(record.boxes.astype(int), record.category_ids):
        if other_category == category and not np.array_equal(other, box):
            x0, y0, x1, y1 = other
            total += (mask[y0:y1, x0:x1] == category).sum()
    return total


def test_resize_and_flip_move_boxes_with_the_pixels():
    image = np.zeros((40, 80, 3), np.uint8)
    image[10:20, 5:25] = 255  # box [5, 10, 25, 20]
    example = dict(image=tf.constant(image), boxes=tf.constant([[5.0, 10.0, 25.0, 20.0]]),
                   labels=tf.constant([0]), image_id=tf.constant(1, tf.int64))
    config = input_pipeline.InputConfig(min_size=80, max_size=120, flip=True)
    for seed in range(6):  # both branches of the flip
        resized, target = input_pipeline.resize_and_flip(example, config, training=True, seed=seed)
        assert float(target["scale"]) == 1.5  # the longer side bounds it: 80 * 1.5 = 120
        bright = np.asarray(resized)[..., 0] > 0
        x0, y0, x1, y1 = np.asarray(target["boxes"][0]).round().astype(int)
        assert bright[y0 + 1:y1 - 1, x0 + 1:x1 - 1].all()
        assert bright.sum() <= (x1 - x0 + 2) * (y1 - y0 + 2)


def test_training_batches_leave_out_images_without_objects(tmp_path):
    document = _document(
        images=[dict(id=1, file_name="a.jpg", height=48, width=64),
                dict(id=2, file_name="b.jpg", height=48, width=64)],
    )
    data = read_coco(_write(tmp_path, document, images=("a.jpg", "b.jpg")), tmp_path)
    config = input_pipeline.InputConfig(min_size=32, max_size=64, size_divisor=32)
    examples = input_pipeline.coco_examples(data)
    (images, target), = input_pipeline.batched(examples, config, 2, training=False).take(1)
    assert sorted(np.asarray(target["image_id"]).tolist()) == [1, 2]  # evaluation keeps all
    assert images.shape == (2, 32, 64, 3)  # 48x64 resized to 32x43, padded to 32x64
    (_, target), = input_pipeline.batched(examples, config, 1, training=True).take(1)
    assert np.asarray(target["image_id"]).tolist() == [1]


def _sized_document(declared, boxes):
    height, width = declared
    return _document(
        images=[dict(id=1, file_name="a.jpg", height=height, width=width)],
        annotations=[dict(id=k + 1, image_id=1, category_id=3, bbox=box)
                     for k, box in enumerate(boxes)],
    )


def test_a_resized_copy_of_the_image_gets_its_boxes_scaled(tmp_path):
    # The record declares 96x128 (h x w) and a box [8, 16, 40, 20] (x, y, w, h);
    # the file holds the image at half size, 48x64. The recipe resizes 48x64 to
    # 60x80 (min_size 60: factor 1.25), so the box lands at
    # [8, 16, 48, 36] * 0.5 * 1.25 = [5, 10, 30, 22.5], and scale = 0.625.
    document = _sized_document((96, 128), [[8, 16, 40, 20]])
    data = read_coco(_write(tmp_path, document), tmp_path)  # writes a 64x48 image
    config = input_pipeline.InputConfig(min_size=60, max_size=200, size_divisor=8)
    (_, target), = input_pipeline.batched(
        input_pipeline.coco_examples(data), config, 1, training=False)
    np.testing.assert_allclose(np.asarray(target["boxes"][0]), [[5, 10, 30, 22.5]], rtol=1e-6)
    assert float(target["scale"][0]) == pytest.approx(0.625)
    # Detections map back to the declared pixels that the ground truth holds.
    np.testing.assert_allclose(np.asarray(target["boxes"][0]) / 0.625, [[8, 16, 48, 36]], rtol=1e-6)


def test_an_image_of_another_shape_than_declared_is_skipped_and_named(tmp_path, capfd):
    # Declared 64x48 (h x w) for a 48x64 file: the sides are swapped.
    images = [dict(id=1, file_name="a.jpg", height=64, width=48),
              dict(id=2, file_name="b.jpg", height=48, width=64)]
    annotations = [dict(id=1, image_id=1, category_id=3, bbox=[4, 4, 20, 10]),
                   dict(id=2, image_id=2, category_id=3, bbox=[4, 4, 20, 10])]
    path = _write(tmp_path, _document(images=images, annotations=annotations),
                  images=("a.jpg", "b.jpg"))
    data = read_coco(path, tmp_path)
    config = input_pipeline.InputConfig(min_size=32, max_size=64, size_divisor=32)
    batches = list(input_pipeline.batched(input_pipeline.coco_examples(data), config, 2,
                                          training=False))
    assert [np.asarray(target["image_id"]).tolist() for _, target in batches] == [[2]]
    assert "a.jpg" in capfd.readouterr().err


def test_a_set_whose_images_all_fail_to_decode_is_one_line(tmp_path):
    # Training would otherwise end at once with a bare StopIteration.
    path = _write(tmp_path, _document())
    (tmp_path / "a.jpg").write_bytes(b"not an image")
    data = read_coco(path, tmp_path)
    with pytest.raises(AnnotationError, match="none of its 1 images with objects could be read"):
        input_pipeline.coco_examples(data)
