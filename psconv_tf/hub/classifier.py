"""Image classifier tasks on the backbones."""

import keras
from keras_hub.models import ImageClassifier

from psconv_tf.hub import saving
from psconv_tf.hub.backbone import PSResNetBackbone
from psconv_tf.hub.convert import ConvertedBackbone
from psconv_tf.hub.preprocessor import ConvertedImageClassifierPreprocessor
from psconv_tf.hub.preprocessor import PSResNetImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSResNetImageClassifier(saving.PresetLoading, saving.StagedSaving, ImageClassifier):
    """keras-hub's `ImageClassifier` (global pooling, dense head) on a
    `PSResNetBackbone`; `ImageClassifier.from_preset(dir)` returns it for a
    preset of that backbone."""

    backbone_cls = PSResNetBackbone
    preprocessor_cls = PSResNetImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="psconv_tf")
class ConvertedImageClassifier(saving.PresetLoading, saving.StagedSaving, ImageClassifier):
    """keras-hub's `ImageClassifier` on a `ConvertedBackbone`;
    `ImageClassifier.from_preset(dir)` returns it for a preset of that
    backbone."""

    backbone_cls = ConvertedBackbone
    preprocessor_cls = ConvertedImageClassifierPreprocessor
