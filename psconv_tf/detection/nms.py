"""Class-wise non-maximum suppression, as MMDetection's `multiclass_nms`.

Every (box, class) pair whose score exceeds `score_threshold` is a
candidate (strictly above, as mmdet's `scores > score_thr`); NMS runs for
each class on its own (mmcv's `batched_nms`), so boxes of different classes
never suppress each other and one box may be kept for several classes; the
`max_detections` best candidates left, over all classes, are the result.
A box is suppressed by a better one of its class whose IoU with it exceeds
`iou_threshold`. This is `tf.image.combined_non_max_suppression` with one
box shared by every class and a per-class limit equal to the total (no class
can place more than `max_detections` boxes among the best `max_detections`).

keras-hub's `NonMaxSuppression`, which it replaces, scores each box by its
best class only and suppresses across classes.
"""

import keras
import tensorflow as tf

FORMATS = ("xyxy", "yxyx")  # corner formats: IoU is the same in both


@keras.saving.register_keras_serializable(package="psconv_tf")
class MultiClassNMS(keras.layers.Layer):
    """A RetinaNet prediction decoder: boxes [batch, anchors, 4] and class
    scores [batch, anchors, classes] (logits when `from_logits`) to
    {"boxes", "confidence", "labels", "num_detections"}, `max_detections`
    per image, best first; the slots after `num_detections` hold -1."""

    def __init__(self, bounding_box_format="xyxy", from_logits=True, iou_threshold=0.5,
                 score_threshold=0.05, max_detections=100, **kwargs):
        super().__init__(**kwargs)
        if bounding_box_format not in FORMATS:
            raise ValueError(f"bounding_box_format must be one of {FORMATS}. "
                             f"Received: {bounding_box_format!r}")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must lie in [0, 1]. Received: {iou_threshold!r}")
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1). Received: {score_threshold!r}")
        if int(max_detections) != max_detections or max_detections <= 0:
            raise ValueError(f"max_detections must be a positive int. Received: {max_detections!r}")
        self.bounding_box_format = bounding_box_format
        self.from_logits = bool(from_logits)
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)

    def call(self, box_prediction, class_prediction, images=None):
        scores = tf.cast(class_prediction, tf.float32)
        if self.from_logits:
            scores = tf.sigmoid(scores)
        boxes = tf.cast(box_prediction, tf.float32)
        result = tf.image.combined_non_max_suppression(
            boxes[:, :, None, :], scores,
            max_output_size_per_class=self.max_detections,
            max_total_size=self.max_detections,
            iou_threshold=self.iou_threshold,
            score_threshold=self.score_threshold,
            clip_boxes=False,  # pixel coordinates, not [0, 1]
        )
        valid = tf.range(self.max_detections)[None, :] < result.valid_detections[:, None]
        return {
            "boxes": tf.where(valid[..., None], result.nmsed_boxes, -1.0),
            "confidence": tf.where(valid, result.nmsed_scores, -1.0),
            "labels": tf.where(valid, tf.cast(result.nmsed_classes, tf.int32), -1),
            "num_detections": result.valid_detections,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "bounding_box_format": self.bounding_box_format,
            "from_logits": self.from_logits,
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
        }
