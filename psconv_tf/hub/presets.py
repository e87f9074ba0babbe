"""Backbone configurations of the zoo, by zoo name, and their named presets.

No weights are hosted. Every zoo name ("ps_resnet50", "resnet18", ...) is a
keras-hub preset of its architecture, shipped in `named_presets/NAME/`:
`config.json` (the `PSResNetBackbone` of `backbone_config(NAME)`),
`image_converter.json` (the zoo's ImageNet convention) and an empty
sharded-weights index, `model.weights.json`, which `PSResNetBackbone` reads
as "no weights" (random initialisation, with a warning). They are
registered with keras-hub as its built-in presets are, so that
`keras_hub.models.Backbone.from_preset("ps_resnet50", load_weights=False)`
resolves the name; `write_named_presets()` rewrites the files from the
zoo's table (a test checks that they are current). Trained presets are
local directories written by `save_to_preset`.
"""

import json
import os

from psconv_tf import models

# Arguments of a zoo builder that the backbone takes under another name.
_RENAMED = {"block": "block_type"}
# Zoo arguments with no meaning for a backbone without a classifier.
_HEAD_ONLY = ("num_classes",)
NAMED_PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "named_presets")
# keras-hub's names.
CONFIG_FILE = "config.json"
CONVERTER_FILE = "image_converter.json"
WEIGHTS_INDEX_FILE = "model.weights.json"
_CONV_NAMES = {"standard": "standard", "psconv": "PSConv2D", "dynamic": "DynamicPSConv2D"}


def zoo_names():
    """Zoo names `backbone_config` accepts (every model of the zoo)."""
    return models.list_models()


def backbone_config(name):
    """`PSResNetBackbone` arguments of the zoo model `name`, e.g. "ps_resnet50"."""
    arguments = models.architecture(name)
    stages = arguments.pop("stages")
    config = dict(
        stackwise_num_blocks=[stage.blocks for stage in stages],
        stackwise_num_filters=[stage.planes for stage in stages],
        stackwise_num_strides=[stage.stride for stage in stages],
    )
    for key, value in arguments.items():
        if key not in _HEAD_ONLY:
            config[_RENAMED.get(key, key)] = value
    return config


def named_preset_files(name):
    """{file name: text} of the named preset `name`: every argument of the
    backbone written out, defaults included."""
    import inspect

    import keras

    from psconv_tf.hub.backbone import PSResNetBackbone
    from psconv_tf.hub.image_converter import PSResNetImageConverter

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
    """Writes the named presets of every zoo name into `directory`."""
    for name in zoo_names():
        folder = os.path.join(directory, name)
        os.makedirs(folder, exist_ok=True)
        for file, text in named_preset_files(name).items():
            with open(os.path.join(folder, file), "w", encoding="utf-8") as handle:
                handle.write(text)


def named_preset_of(filepath):
    """The name of the named preset whose weights index is `filepath`, or None."""
    try:
        path = os.path.abspath(os.fspath(filepath))
    except TypeError:
        return None
    folder, file = os.path.split(path)
    if file != WEIGHTS_INDEX_FILE or os.path.dirname(folder) != NAMED_PRESETS_DIR:
        return None
    return os.path.basename(folder)


def description(name):
    arguments = models.architecture(name)
    return (
        f"The zoo's {name} ({_CONV_NAMES[arguments['conv']]} 3x3 convs) as a "
        "backbone, randomly initialised: no weights are hosted."
    )


def register_named_presets(backbone_cls):
    """Registers every zoo name as a keras-hub preset of `backbone_cls`;
    names keras-hub already has are left to keras-hub."""
    # keras-hub exports no registration of presets: this is the function
    # that its own models call.
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS
    from keras_hub.src.utils.preset_utils import register_presets

    named = {}
    for name in zoo_names():
        folder = os.path.join(NAMED_PRESETS_DIR, name)
        taken = BUILTIN_PRESETS.get(name, {}).get("kaggle_handle", folder) != folder
        if taken or not os.path.isdir(folder):
            continue
        named[name] = {
            "metadata": {"description": description(name), "path": "psconv_tf"},
            "kaggle_handle": folder,
        }
    register_presets(named, backbone_cls)
