"""The zoo as keras-hub models: backbone, image converter, preprocessor,
classifier, and a keras-hub-aware `convert_backbone`.

    >>> from psconv_tf import hub
    >>> backbone = hub.PSResNetBackbone.from_zoo("ps_resnet50")
    >>> sorted(backbone.pyramid_outputs)
    ['P2', 'P3', 'P4', 'P5']

Needs keras-hub (`pip install "psconv-tf[detect]"`). The classes are
registered with Keras, and `import psconv_tf` imports this package as soon
as keras-hub is imported, so `keras_hub.models.Backbone.from_preset(dir)`,
`keras_hub.models.ImageClassifier.from_preset(dir)` and the detection and
segmentation tasks of keras-hub find them. Every zoo name is a named preset
without weights: `Backbone.from_preset("ps_resnet50", load_weights=False)`.
"""

try:
    import keras_hub  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "psconv_tf.hub needs keras-hub: pip install \"psconv-tf[detect]\""
    ) from error

from psconv_tf.hub import zoo_configs
from psconv_tf.hub.backbone import PSResNetBackbone
from psconv_tf.hub.classifier import ConvertedImageClassifier
from psconv_tf.hub.classifier import PSResNetImageClassifier
from psconv_tf.hub.convert import ConvertedBackbone
from psconv_tf.hub.convert import convert_backbone
from psconv_tf.hub.image_converter import ConvertedImageConverter
from psconv_tf.hub.image_converter import PSResNetImageConverter
from psconv_tf.hub.preprocessor import ConvertedImageClassifierPreprocessor
from psconv_tf.hub.preprocessor import PSResNetImageClassifierPreprocessor
from psconv_tf.hub.zoo_configs import backbone_config
from psconv_tf.hub.saving import PresetError

zoo_configs.register_named_presets(PSResNetBackbone)
