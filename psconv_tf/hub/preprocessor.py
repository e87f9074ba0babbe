"""Image classifier preprocessors of the backbones' presets."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from psconv_tf.hub.backbone import PSResNetBackbone
from psconv_tf.hub.convert import ConvertedBackbone
from psconv_tf.hub.image_converter import ConvertedImageConverter
from psconv_tf.hub.image_converter import PSResNetImageConverter
from psconv_tf.hub.saving import PresetLoading


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSResNetImageClassifierPreprocessor(PresetLoading, ImageClassifierPreprocessor):
    backbone_cls = PSResNetBackbone
    image_converter_cls = PSResNetImageConverter


@keras.saving.register_keras_serializable(package="psconv_tf")
class ConvertedImageClassifierPreprocessor(PresetLoading, ImageClassifierPreprocessor):
    backbone_cls = ConvertedBackbone
    image_converter_cls = ConvertedImageConverter
