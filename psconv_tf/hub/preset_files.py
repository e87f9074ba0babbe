"""The files of the zoo's named presets (see `zoo_configs`), written from
the zoo's table: `config.json`, `image_converter.json` and an empty weights
index per zoo name."""

import inspect
import json
import os

import keras

from psconv_tf import models
from psconv_tf.hub.backbone import PSResNetBackbone
from psconv_tf.hub.image_converter import PSResNetImageConverter
from psconv_tf.hub.zoo_configs import CONFIG_FILE
from psconv_tf.hub.zoo_configs import CONVERTER_FILE
from psconv_tf.hub.zoo_configs import NAMED_PRESETS_DIR
from psconv_tf.hub.zoo_configs import WEIGHTS_INDEX_FILE
from psconv_tf.hub.zoo_configs import backbone_config
from psconv_tf.runtime import files


def named_preset_files(name):
    """{file name: text} of the named preset `name`: every argument of the
    backbone written out, defaults included."""
    defaults = {
        key: parameter.default
        for key, parameter in inspect.signature(PSResNetBackbone).parameters.items()
        if parameter.default is not inspect.Parameter.empty and key != "dtype"
    }
    backbone = {
        "module": "psconv_tf.hub.backbone",
        "class_name": "PSResNetBackbone",
        "config": {"name": name, **defaults, **backbone_config(name)},
        "registered_name": "psconv_tf>PSResNetBackbone",
    }
    converter = keras.saving.serialize_keras_object(
        PSResNetImageConverter.imagenet(name="image_converter")
    )
    converter.pop("build_config", None)
    index = {
        "metadata": {"psconv_tf": "no weights are hosted: a randomly initialised backbone"},
        "weight_map": {},
    }
    return {
        CONFIG_FILE: json.dumps(backbone, indent=4) + "\n",
        CONVERTER_FILE: json.dumps(converter, indent=4) + "\n",
        WEIGHTS_INDEX_FILE: json.dumps(index, indent=4) + "\n",
    }


def write_named_presets(directory=NAMED_PRESETS_DIR):
    """Writes the named presets of every zoo name into `directory`, each
    file whole (temporary name, then rename)."""
    for name in models.list_models():
        folder = os.path.join(directory, name)
        os.makedirs(folder, exist_ok=True)
        for file, text in named_preset_files(name).items():
            files.write_bytes(os.path.join(folder, file), text.encode("utf-8"))
