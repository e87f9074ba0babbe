"""Detection and segmentation on the zoo with keras-hub: COCO-format data,
pycocotools evaluation, generated offline data sets, RetinaNet, the
detection task of the `Trainer` (`task`) and DeepLabV3. Needs the `detect` extra (keras-hub, pycocotools)."""

from psconv_tf.detection.coco_data import AnnotationError
from psconv_tf.detection.coco_data import CocoData
from psconv_tf.detection.coco_data import read_coco
from psconv_tf.detection.evaluation import METRICS
from psconv_tf.detection.evaluation import evaluate_boxes
from psconv_tf.detection.evaluation import ground_truth
