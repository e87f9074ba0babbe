"""Image classifier preprocessor of `PSResNetBackbone` presets."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from psconv_tf.hub.backbone import PSResNetBackbone
from psconv_tf.hub.image_converter import PSResNetImageConverter


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSResNetImageClassifierPreprocessor(ImageClassifierPreprocessor):
    backbone_cls = PSResNetBackbone
    image_converter_cls = PSResNetImageConverter
