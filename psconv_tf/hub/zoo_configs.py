"""The zoo as keras-hub named presets: each zoo name's backbone
configuration, where its preset files lie, and their registration.

No weights are hosted. Every zoo name ("ps_resnet50", "resnet18", ...) is a
keras-hub preset of its architecture, shipped in `named_presets/NAME/`:
`config.json` (the `PSResNetBackbone` of `backbone_config(NAME)`),
`image_converter.json` (the zoo's ImageNet convention) and an empty
sharded-weights index, `model.weights.json`, which `PSResNetBackbone` reads
as "no weights" (random initialisation, with a warning). They are
registered with keras-hub as its built-in presets are, so that
`keras_hub.models.Backbone.from_preset("ps_resnet50", load_weights=False)`
resolves the name; `psconv_tf.hub.preset_files.write_named_presets()`
rewrites the files from the zoo's table (a test checks that they are
current). Trained presets are local directories written by `save_to_preset`.
"""

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
_CONV_NAMES = {
    "standard": "standard", "psconv": "PSConv2D", "dynamic": "DynamicPSConv2D",
    "psconv_official": "OfficialPSConv2D",
}


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
    for name in models.list_models():
        folder = os.path.join(NAMED_PRESETS_DIR, name)
        taken = BUILTIN_PRESETS.get(name, {}).get("kaggle_handle", folder) != folder
        if taken or not os.path.isdir(folder):
            continue
        named[name] = {
            "metadata": {"description": description(name), "path": "psconv_tf"},
            "kaggle_handle": folder,
        }
    register_presets(named, backbone_cls)
