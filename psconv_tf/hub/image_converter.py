"""Image converters (resize, rescale) of the backbones' presets.

Each converter names its backbone (`backbone_cls`, as in keras-hub) and
gives, as `preset_default()`, the converter that a preset of that backbone
gets when it is saved without one (`saving.StagedSaving`), so that keras-hub's
image tasks (`ImageClassifier.from_preset(dir, num_classes=...)`) load it.
"""

import keras
from keras_hub.layers import ImageConverter

from psconv_tf.hub.backbone import PSResNetBackbone
from psconv_tf.hub.convert import ConvertedBackbone
from psconv_tf.hub.saving import PresetLoading
from psconv_tf.runtime import statistics
from psconv_tf.runtime.statistics import IMAGENET_MEAN
from psconv_tf.runtime.statistics import IMAGENET_STD


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSResNetImageConverter(PresetLoading, ImageConverter):
    """keras-hub's `ImageConverter` (optional resize, then x * scale +
    offset), tied to `PSResNetBackbone`."""

    backbone_cls = PSResNetBackbone

    @classmethod
    def imagenet(cls, image_size=None, **kwargs):
        """The zoo's input convention: pixels in [0, 255] to
        (x / 255 - mean) / std with ImageNet's mean and std."""
        scale, offset = statistics.scale_and_offset(IMAGENET_MEAN, IMAGENET_STD,
                                                    pixel_range=statistics.PIXEL_RANGE)
        return cls(image_size=image_size, scale=scale, offset=offset, **kwargs)

    @classmethod
    def preset_default(cls):
        """The zoo's ImageNet convention (`imagenet()`)."""
        return cls.imagenet()


@keras.saving.register_keras_serializable(package="psconv_tf")
class ConvertedImageConverter(PresetLoading, ImageConverter):
    """keras-hub's `ImageConverter`, tied to `ConvertedBackbone`. Its
    default passes images through unchanged: a converted backbone keeps the
    input convention of the backbone it was converted from, which it does
    not know."""

    backbone_cls = ConvertedBackbone

    @classmethod
    def preset_default(cls):
        """Images pass unchanged: the input convention of the backbone
        converted from is not known here (save its converter into the preset
        to keep it)."""
        return cls()
