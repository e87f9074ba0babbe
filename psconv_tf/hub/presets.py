"""Backbone configurations of the zoo, by zoo name.

No weights are hosted: a preset of this package is a local directory written
by `save_to_preset` (from a trained model, or after `load_torch`). These are
the architectures, from the zoo's own table.
"""

from psconv_tf import models

# Arguments of a zoo builder that the backbone takes under another name.
_RENAMED = {"block": "block_type"}
# Zoo arguments with no meaning for a backbone without a classifier.
_HEAD_ONLY = ("num_classes",)


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
