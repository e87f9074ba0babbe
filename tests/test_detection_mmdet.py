"""RetinaNet on MMDetection's protocol: class-wise NMS against a NumPy
reference, per-batch padding to multiples of 32, anchors at the true strides
for any such size, the PSConv FPN (the paper's footnote 4), the linear
warm-up of the authors' configs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from psconv_tf import hub
from psconv_tf.detection import anchors
from psconv_tf.detection import input_pipeline
from psconv_tf.detection import nms
from psconv_tf.detection import retinanet
from psconv_tf.layers.ps_conv2d import PSConv2D

TINY = dict(stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_filters=[8, 8, 16, 16],
            stem_filters=8, conv="psconv")


def _logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p / (1 - p)).astype("float32")


def _decode(boxes, scores, max_detections=100):
    """retinanet's decoder on one image's boxes [N, 4] and probabilities
    [N, C]; the valid detections as (box, score, label) lists."""
    decoder = retinanet.prediction_decoder(max_detections=max_detections)
    out = decoder(np.asarray(boxes, "float32")[None], _logit(scores)[None])
    count = int(out["num_detections"][0])
    return (np.asarray(out["boxes"][0][:count]), np.asarray(out["confidence"][0][:count]),
            np.asarray(out["labels"][0][:count]).tolist())


A, B = [0, 0, 10, 10], [1, 0, 11, 10]  # IoU 9/11


def test_overlapping_boxes_of_different_classes_are_both_kept():
    boxes, scores, labels = _decode([A, B], [[0.9, 0.01], [0.01, 0.8]])
    assert labels == [0, 1]
    np.testing.assert_allclose(scores, [0.9, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(boxes, [A, B])


def test_overlapping_boxes_of_one_class_are_suppressed():
    boxes, scores, labels = _decode([A, B], [[0.9, 0.01], [0.8, 0.01]])
    assert labels == [0]
    np.testing.assert_array_equal(boxes, [A])


def test_one_box_above_the_threshold_in_two_classes_is_two_detections():
    boxes, scores, labels = _decode([A, [50, 50, 60, 60]], [[0.7, 0.6], [0.04, 0.05]])
    assert labels == [0, 1]  # the second box: 0.04 and 0.05 are not above 0.05
    np.testing.assert_array_equal(boxes, [A, A])
    np.testing.assert_allclose(scores, [0.7, 0.6], rtol=1e-6)


def test_the_best_detections_over_all_classes_are_kept():
    far = [[40 * k, 0, 40 * k + 10, 10] for k in range(4)]  # no overlaps
    probabilities = [[0.95, 0.9], [0.8, 0.1], [0.2, 0.6], [0.7, 0.5]]
    boxes, scores, labels = _decode(far, probabilities, max_detections=3)
    np.testing.assert_allclose(scores, [0.95, 0.9, 0.8], rtol=1e-6)  # box 0 twice
    assert labels == [0, 1, 0]
    np.testing.assert_array_equal(boxes, [far[0], far[0], far[1]])


def _reference_multiclass_nms(boxes, scores, score_threshold, iou_threshold, max_detections):
    """MMDetection's multiclass_nms, written out in float64: candidates
    (box, class) above the threshold, greedy NMS per class, best overall."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    kept = []
    for c in range(scores.shape[1]):
        order = [i for i in np.argsort(-scores[:, c], kind="stable") if scores[i, c] > score_threshold]
        chosen = []
        for i in order:
            if all(iou(boxes[i], boxes[j]) <= iou_threshold for j in chosen):
                chosen.append(i)
        kept += [(scores[i, c], c, i) for i in chosen]
    kept.sort(key=lambda t: -t[0])
    return kept[:max_detections]


def test_random_boxes_match_a_reference_multiclass_nms():
    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 60, (40, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(8, 30, (40, 2))], axis=1)
    scores = rng.uniform(0, 1, (40, 3)) ** 3  # many below 0.05
    boxes, scores = boxes.astype("float32").astype(np.float64), scores.astype("float32").astype(np.float64)
    expected = _reference_multiclass_nms(boxes, scores, 0.05, 0.5, 25)
    got_boxes, got_scores, got_labels = _decode(boxes, scores, max_detections=25)
    assert got_labels == [c for _, c, _ in expected]
    np.testing.assert_allclose(got_scores, [s for s, _, _ in expected], rtol=1e-5)
    np.testing.assert_allclose(got_boxes, boxes[[i for _, _, i in expected]], rtol=1e-6)


def test_decoder_arguments_are_checked_and_serialised():
    for bad in (dict(iou_threshold=float("nan")), dict(score_threshold=1.5),
                dict(max_detections=0), dict(bounding_box_format="center_xywh")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            nms.MultiClassNMS(**bad)
    decoder = retinanet.prediction_decoder()
    again = keras.layers.deserialize(keras.layers.serialize(decoder))
    assert again.get_config() == decoder.get_config()


def _example(height, width, box, image_id):
    image = np.full((height, width, 3), 200, np.uint8)
    return dict(image=image, boxes=np.array([box], np.float32), labels=np.array([0], np.int32),
                image_id=np.int64(image_id))


def test_a_batch_is_padded_to_its_largest_sides_rounded_up_to_32():
    # min_size 40, max_size 70: 40x70 stays; 33x50 becomes 40x61 (scale 40/33).
    examples = [_example(40, 70, [10, 5, 20, 15], 1), _example(33, 50, [0, 0, 33, 33], 2)]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature=dict(image=tf.TensorSpec((None, None, 3), tf.uint8),
                              boxes=tf.TensorSpec((None, 4)), labels=tf.TensorSpec((None,), tf.int32),
                              image_id=tf.TensorSpec((), tf.int64)))
    config = input_pipeline.InputConfig(min_size=40, max_size=70)
    (images, target), = input_pipeline.batched(dataset, config, 2, training=False)
    assert images.shape == (2, 64, 96, 3)  # max(40, 40) -> 64, max(70, 61) -> 96
    np.testing.assert_allclose(target["boxes"], [[[10, 5, 20, 15]], [[0, 0, 40, 40]]], rtol=1e-5)
    images = np.asarray(images)
    assert (images[0, 40:] == 0).all() and (images[0, :, 70:] == 0).all()
    assert (images[1, :, 61:] == 0).all() and (images[0, :40, :70] != 0).all()


def test_anchors_lie_at_the_strides_for_sizes_that_are_not_multiples_of_128():
    generator = anchors.StrideAnchorGenerator("xyxy", min_level=3, max_level=7, num_scales=3,
                                              aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4)
    levels = generator(np.zeros((1, 160, 96, 3), "float32"))
    for level in range(3, 8):
        stride = 2**level
        rows, cols = -(-160 // stride), -(-96 // stride)
        centres = np.asarray(levels[f"P{level}"]).reshape(rows, cols, 9, 4)
        centres = (centres[..., :2] + centres[..., 2:]) / 2
        x, y = np.meshgrid(np.arange(cols) * stride, np.arange(rows) * stride)
        np.testing.assert_array_equal(centres[..., 0], np.repeat(x[..., None], 9, -1))
        np.testing.assert_array_equal(centres[..., 1], np.repeat(y[..., None], 9, -1))
    # Where keras-hub's generator is right (sides multiples of 128), the same anchors.
    import keras_hub
    theirs = keras_hub.layers.AnchorGenerator("xyxy", min_level=3, max_level=7, num_scales=3,
                                              aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4)
    image = np.zeros((1, 256, 128, 3), "float32")
    for name, value in theirs(image).items():
        np.testing.assert_array_equal(generator(image)[name], value)


def test_psconv_neck_has_the_paper_pattern_in_the_fpn_3x3_convs(tmp_path):
    detector = retinanet.build_detector(hub.PSResNetBackbone(**TINY), num_classes=3,
                                        head_convs=1, neck="psconv")
    fpn = detector.backbone.feature_pyramid
    for level in ("P3", "P4", "P5"):
        conv = fpn.output_conv_layers[level]
        assert type(conv) is PSConv2D and conv.kernel_size == (3, 3)
        assert conv.pattern == (1, 2, 1, 4) and conv.dilation_rate == (1, 1)
        assert conv.cyclic == "both" and conv.layout == "blocked" and conv.strides == (1, 1)
    for level in ("P6", "P7"):  # stride-2 extra levels stay standard, as the authors'
        assert type(fpn.output_conv_layers[level]) is keras.layers.Conv2D
    assert all(type(c) is keras.layers.Conv2D for c in fpn.lateral_conv_layers.values())
    assert all(any(w is v for v in detector.trainable_weights)
               for level in ("P3", "P4", "P5") for w in fpn.output_conv_layers[level].weights)
    assert len(fpn.weights) == 16  # 3 lateral + 5 output convs: no replaced conv left behind
    # Runs on a 96x64 batch (not a multiple of 128), decodes, reloads the same.
    x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 64, 3)).astype("float32")
    out = detector.decode_predictions(detector(x), x)
    assert out["boxes"].shape == (2, 100, 4)
    detector.save(tmp_path / "detector.keras")
    loaded = keras.saving.load_model(tmp_path / "detector.keras")
    assert type(loaded.backbone.feature_pyramid.output_conv_layers["P4"]) is PSConv2D
    np.testing.assert_array_equal(loaded(x)["cls_logits"], detector(x)["cls_logits"])
    with pytest.raises(ValueError, match="neck"):
        retinanet.build_detector(hub.PSResNetBackbone(**TINY), num_classes=3, neck="dilated")


def test_the_neck_flag_reaches_the_detector(monkeypatch):
    import training_helpers
    from psconv_tf.detection import task

    coco = training_helpers.load_script("coco")
    args = coco.build_parser().parse_args(["--neck", "psconv"])
    assert coco._extras(args)["neck"] == "psconv"
    assert coco.build_parser().parse_args([]).neck == "standard"
    with pytest.raises(SystemExit):
        coco.build_parser().parse_args(["--neck", "dilated"])
    built = {}

    def spy(backbone, num_classes, head_convs=4, dtype=None, neck="standard"):
        built["neck"] = neck
        raise RuntimeError("built")

    monkeypatch.setattr(retinanet, "build_detector", spy)
    config = type("Config", (), dict(model="resnet18", model_kwargs={}, num_classes=3,
                                     extras={"neck": "psconv"}))()
    with pytest.raises(RuntimeError, match="built"):
        task.build_detector(config)
    assert built == {"neck": "psconv"}
    # A config of a run that predates the flag: the standard neck.
    older = type("Config", (), dict(extras={"head_convs": 1}))()
    assert task.detector_settings(older)["neck"] == "standard"
