"""RetinaNet on zoo backbones: model, backbone weights, and the training
inputs and detections over `input_pipeline` batches.

The detector is keras-hub's `RetinaNetObjectDetector`: an FPN (P3-P7, P6
from C5; standard convs, or PSConv in its 3x3 output convs: `neck`) on a
`PSResNetBackbone`, focal loss and smooth-L1 (Huber) box loss, anchors of 3
scales x 3 aspect ratios at the true strides for any image size that is a
multiple of 32 (`anchors`), MMDetection's class-wise NMS (`nms`). That is
RetinaNet, not the Mask R-CNN of the paper's Table 7.
"""

import os

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from psconv_tf.detection import anchors
from psconv_tf.detection import evaluation
from psconv_tf.detection import neck as necks
from psconv_tf.detection import nms
from psconv_tf.layers.dynamic_ps_conv2d import DynamicPSConv2D
from psconv_tf.hub import PSResNetBackbone
from psconv_tf.layers.ps_conv2d import PSConv2D
from psconv_tf.checkpoints.loading import load_torch

TORCH_SUFFIXES = (".pth", ".pt")


def build_detector(backbone, num_classes, head_convs=4, dtype=None, neck="standard"):
    """RetinaNet (FPN P3-P7) on `backbone`: a `PSResNetBackbone` or a zoo
    name, built with `image_shape=(None, None, 3)`. `neck`: "standard" (the
    FPN's 3x3 convs standard, as in the paper's Table 7) or "psconv"
    (`neck.PSRetinaNetBackbone`: PSConv in the FPN's 3x3 output convs, the
    paper's footnote 4). Anchors follow the image's size at every call
    (`anchors.StrideAnchorGenerator`), so batches may be of any size that is
    a multiple of 32; decoding is class-wise NMS (`prediction_decoder`)."""
    if isinstance(backbone, str):
        backbone = PSResNetBackbone.from_zoo(backbone, dtype=dtype)
    if set(backbone.pyramid_outputs) < {"P3", "P4", "P5"}:
        raise ValueError(
            f"RetinaNet needs pyramid levels P3-P5; the backbone has "
            f"{sorted(backbone.pyramid_outputs)} (CIFAR models have no P5)."
        )
    fpn = necks.retinanet_backbone(backbone, neck, dtype=dtype)
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=fpn,
        num_classes=num_classes,
        bounding_box_format="xyxy",
        anchor_generator=anchors.StrideAnchorGenerator(
            "xyxy", min_level=fpn.min_level, max_level=fpn.max_level, num_scales=3,
            aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4,
        ),
        pre_logits_num_conv_layers=head_convs,
        dtype=dtype,
        prediction_decoder=prediction_decoder(),
    )


def prediction_decoder(score_threshold=0.05, iou_threshold=0.5, max_detections=100):
    """Class-wise NMS (`nms.MultiClassNMS`, mmdet's `multiclass_nms`) at the
    thresholds RetinaNet is evaluated at (mmdet's test config): scores above
    0.05, IoU 0.5 within a class, the 100 best (box, class) pairs per image."""
    return nms.MultiClassNMS(
        bounding_box_format="xyxy",
        from_logits=True,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        max_detections=max_detections,
    )


def load_backbone_weights(backbone, source, masked="error"):
    """Fills `backbone` (a `PSResNetBackbone`) from `source`, completely or
    not at all.

    `source` is a `.pth` checkpoint (`load_torch` without `strict`:
    torchvision or official PSConv keys, the classifier's ignored; it raises
    when the checkpoint would fill less than half of the backbone, or a conv
    type differs), a `.keras` model (a zoo classifier or backbone, or a
    keras-hub classifier on one), or a training run folder (its
    `best.keras`). From a model, layers are matched by name, and every
    weighted layer of the backbone must find its counterpart: of the same
    kind (PSConv2D or standard), with the same rates and weight shapes. The
    classifier head of the source is ignored; any other weighted layer the
    backbone lacks (the corrections of a `masked="compat"` model) is refused,
    since the backbone would compute another function than the source.
    """
    source = os.fspath(source)
    if source.endswith(TORCH_SUFFIXES):
        if masked not in ("error", "zero"):
            raise ValueError(
                "A backbone takes masked='error' or 'zero': 'compat' adds "
                "layers that a backbone preset cannot describe."
            )
        load_torch(backbone, source, strict=False, masked=masked)
        return
    from psconv_tf.export.sources import load_model

    _fill_from_model(backbone, load_model(source), source)


# Classifier heads: the zoo's and keras-hub's ImageClassifier's.
_HEADS = ("fc", "predictions")


def _fill_from_model(backbone, model, source):
    """`backbone`'s weights from the layers of the same names in `model`."""
    theirs = _weighted_layers(model, source)
    pairs = []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name not in theirs:
            raise ValueError(f"{source}: no layer {layer.name!r} for the backbone")
        other = theirs.pop(layer.name)
        _check_counterpart(layer, other, source)
        pairs.append((layer, other.get_weights()))
    extra = sorted(name for name in theirs if name not in _HEADS)
    if extra:
        raise ValueError(
            f"{source}: {len(extra)} weighted layers that the backbone lacks "
            f"({', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}): the "
            "backbone would compute another function. (A masked='compat' model? "
            "Load the .pth with masked='zero' instead.)"
        )
    for layer, values in pairs:
        layer.set_weights(values)


def _weighted_layers(model, source):
    """{name: layer} of `model`'s weighted layers, nested models opened."""
    layers = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            nested = _weighted_layers(layer, source)
        elif layer.weights:
            nested = {layer.name: layer}
        else:
            continue
        for name, found in nested.items():
            if name in layers:
                raise ValueError(f"{source}: two layers are named {name!r}")
            layers[name] = found
    return layers


def _check_counterpart(layer, other, source):
    if isinstance(other, DynamicPSConv2D) and not isinstance(layer, DynamicPSConv2D):
        raise ValueError(
            f"{source}: layer {layer.name!r} is a DynamicPSConv2D there: freeze the "
            "model first (psconv_tf.freeze), which makes it a PSConv2D"
        )
    if isinstance(layer, PSConv2D) != isinstance(other, PSConv2D):
        raise ValueError(
            f"{source}: layer {layer.name!r} is a {type(other).__name__} there and a "
            f"{type(layer).__name__} in the backbone: load PSConv models into 'ps_' "
            "backbones and standard ones into their twins"
        )
    static = isinstance(layer, PSConv2D) and not isinstance(layer, DynamicPSConv2D)
    if static and not np.array_equal(layer.dilation_matrix(), other.dilation_matrix()):
        raise ValueError(
            f"{source}: layer {layer.name!r} has other rates there (pattern "
            f"{other.pattern}, cyclic {other.cyclic!r}, dilation_rate "
            f"{other.dilation_rate}) than in the backbone (pattern {layer.pattern}, "
            f"cyclic {layer.cyclic!r}, dilation_rate {layer.dilation_rate})"
        )
    shapes = [tuple(w.shape) for w in other.weights]
    expected = [tuple(w.shape) for w in layer.weights]
    if shapes != expected:
        raise ValueError(
            f"{source}: layer {layer.name!r} has weight shapes {shapes}; the backbone "
            f"expects {expected}"
        )


def train_inputs(batches):
    """(images, {"boxes", "labels"}) batches for `fit`, from `input_pipeline`."""
    return batches.map(lambda images, target: (images, dict(boxes=target["boxes"], labels=target["labels"])))


def detect(detector, batches, categories):
    """COCO result entries of the detector on `input_pipeline` batches, boxes
    mapped back to the original image sizes, labels to category ids."""
    category_ids = np.array([c.id for c in categories])

    @tf.function(reduce_retracing=True)  # batches differ in size
    def predict(images):
        return detector.decode_predictions(detector(images, training=False), images)

    results = []
    for images, target in batches:
        predictions = predict(images)
        for index in range(images.shape[0]):
            count = int(predictions["num_detections"][index])
            scale = float(target["scale"][index])
            results += evaluation.detections_of(
                int(target["image_id"][index]),
                np.asarray(predictions["boxes"][index][:count]) / scale,
                np.asarray(predictions["confidence"][index][:count]),
                category_ids[np.asarray(predictions["labels"][index][:count]).astype(int)],
            )
    return results
