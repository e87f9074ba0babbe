"""Image classifier task on `PSResNetBackbone`."""

import keras
from keras_hub.models import ImageClassifier

from psconv_tf.hub import saving
from psconv_tf.hub.backbone import PSResNetBackbone
from psconv_tf.hub.preprocessor import PSResNetImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSResNetImageClassifier(ImageClassifier):
    """keras-hub's `ImageClassifier` (global pooling, dense head) on a
    `PSResNetBackbone`; `ImageClassifier.from_preset(dir)` returns it for a
    preset of that backbone."""

    backbone_cls = PSResNetBackbone
    preprocessor_cls = PSResNetImageClassifierPreprocessor

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """As keras-hub's, each file written whole (temporary name, rename)."""
        with saving.staged_directory(preset_dir) as staging:
            super().save_to_preset(staging, max_shard_size=max_shard_size)
