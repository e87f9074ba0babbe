"""The model zoo: the paper's networks, each with its standard twin.

    >>> from psconv_tf import models
    >>> model = models.get("ps_resnet50", num_classes=10, input_shape=(64, 64, 3))
    >>> "ps_resnext50_32x4d" in models.list_models()
    True

Every architecture `NAME` is registered three times: `NAME` with standard
convs, `ps_NAME` with PSConv2D (pass `pattern`, `cyclic` or `dilation_rate`
to tune it) and `dps_NAME` with DynamicPSConv2D, which learns its lattice
(pass `dynamic_options`; `psconv_tf.freeze` turns it into `ps_NAME` with the
learned lattices). The grouped architectures (ResNeXt) are registered a
fourth time, `ps_NAME_official`, with `OfficialPSConv2D`: the network the
authors trained with their released grouped layer, which keeps rate-1
kernels beside the dilated ones in most groups (the paper's form, `ps_NAME`,
stays the default). The builders are also importable by name, with a `conv`
argument ("standard", "psconv", "dynamic" or "psconv_official").
"""

import fnmatch
import functools

from psconv_tf.models.resnet import ResNet
from psconv_tf.models.resnet import Stage
from psconv_tf.models.resnet import imagenet_stages

_ARCHITECTURES = {
    # ImageNet ResNets, torchvision v1.5 layout.
    "resnet18": dict(stages=imagenet_stages((2, 2, 2, 2)), block="basic"),
    "resnet34": dict(stages=imagenet_stages((3, 4, 6, 3)), block="basic"),
    "resnet50": dict(stages=imagenet_stages((3, 4, 6, 3))),
    "resnet101": dict(stages=imagenet_stages((3, 4, 23, 3))),
    "resnet152": dict(stages=imagenet_stages((3, 8, 36, 3))),
    # ResNeXt (Xie et al. 2017), cardinality x bottleneck width.
    "resnext50_32x4d": dict(
        stages=imagenet_stages((3, 4, 6, 3)), groups=32, width_per_group=4
    ),
    "resnext101_32x4d": dict(
        stages=imagenet_stages((3, 4, 23, 3)), groups=32, width_per_group=4
    ),
    "resnext101_32x8d": dict(
        stages=imagenet_stages((3, 4, 23, 3)), groups=32, width_per_group=8
    ),
    # SE-ResNet (Hu et al. 2018), reduction 16.
    "se_resnet50": dict(stages=imagenet_stages((3, 4, 6, 3)), se_reduction=16),
    "se_resnet101": dict(stages=imagenet_stages((3, 4, 23, 3)), se_reduction=16),
    # CIFAR ResNeXt-29 (Xie et al. 2017): 3 stages of 3 bottlenecks, d = 64.
    "resnext29_8x64d": dict(
        stages=(Stage(3, 64, 1), Stage(3, 128, 2), Stage(3, 256, 2)),
        stem="cifar", groups=8, width_per_group=64, num_classes=100,
    ),
    "resnext29_16x64d": dict(
        stages=(Stage(3, 64, 1), Stage(3, 128, 2), Stage(3, 256, 2)),
        stem="cifar", groups=16, width_per_group=64, num_classes=100,
    ),
    # Small CIFAR ResNets (He et al. 2016) with projection shortcuts.
    "cifar_resnet20": dict(
        stages=(Stage(3, 16, 1), Stage(3, 32, 2), Stage(3, 64, 2)),
        block="basic", stem="cifar", stem_filters=16, num_classes=10,
    ),
    "cifar_resnet56": dict(
        stages=(Stage(9, 16, 1), Stage(9, 32, 2), Stage(9, 64, 2)),
        block="basic", stem="cifar", stem_filters=16, num_classes=10,
    ),
}


_NAMES = {
    "standard": "{}", "psconv": "ps_{}", "dynamic": "dps_{}",
    "psconv_official": "ps_{}_official",
}


def _builder(architecture):
    def build(conv="standard", **kwargs):
        arguments = dict(_ARCHITECTURES[architecture])
        arguments.update(kwargs)
        arguments.setdefault("name", _NAMES.get(conv, "{}").format(architecture))
        return ResNet(conv=conv, **arguments)

    build.__name__ = architecture
    build.__doc__ = (
        f"{architecture}: `ResNet` with this architecture's stages; `conv` is "
        "'standard', 'psconv', 'dynamic' or 'psconv_official', other arguments "
        "as for `ResNet`."
    )
    return build


_BUILDERS = {name: _builder(name) for name in _ARCHITECTURES}
resnet18 = _BUILDERS["resnet18"]
resnet34 = _BUILDERS["resnet34"]
resnet50 = _BUILDERS["resnet50"]
resnet101 = _BUILDERS["resnet101"]
resnet152 = _BUILDERS["resnet152"]
resnext50_32x4d = _BUILDERS["resnext50_32x4d"]
resnext101_32x4d = _BUILDERS["resnext101_32x4d"]
resnext101_32x8d = _BUILDERS["resnext101_32x8d"]
se_resnet50 = _BUILDERS["se_resnet50"]
se_resnet101 = _BUILDERS["se_resnet101"]
resnext29_8x64d = _BUILDERS["resnext29_8x64d"]
resnext29_16x64d = _BUILDERS["resnext29_16x64d"]
cifar_resnet20 = _BUILDERS["cifar_resnet20"]
cifar_resnet56 = _BUILDERS["cifar_resnet56"]

_REGISTRY = {}
for _name, _build in _BUILDERS.items():
    _REGISTRY[_name] = functools.partial(_build, conv="standard")
    _REGISTRY["ps_" + _name] = functools.partial(_build, conv="psconv")
    _REGISTRY["dps_" + _name] = functools.partial(_build, conv="dynamic")
    if _ARCHITECTURES[_name].get("groups", 1) > 1:
        _REGISTRY[f"ps_{_name}_official"] = functools.partial(_build, conv="psconv_official")


def list_models(filter="", exclude_filters=""):
    """Names accepted by `get`, sorted.

    Args:
        filter: as timm's: a shell-style pattern or a list of them, e.g.
            "ps_*" or ["*resnext*", "se_*"]; a name is listed if it matches
            any ("" lists every name).
        exclude_filters: pattern(s) of names to leave out, e.g. "dps_*".
    """
    names = sorted(_REGISTRY)
    include = _patterns(filter, "filter")
    exclude = _patterns(exclude_filters, "exclude_filters")
    if include:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)]
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]


def _patterns(value, argument):
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(
            f"Argument `{argument}` must be a pattern or a list of patterns "
            f"(strings). Received: {argument}={value!r}"
        )
    return [p for p in patterns if p]


def architecture(name):
    """The `ResNet` arguments that define `name` (e.g. "ps_resnet50"): a new
    dict with `stages`, `conv` and, where not the default, `block`, `stem`,
    `groups`, ... (num_classes only for CIFAR models)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}. Valid names: {', '.join(list_models())}."
        )
    build = _REGISTRY[name]
    return dict(_ARCHITECTURES[build.func.__name__], conv=build.keywords["conv"])


def get(name, **kwargs):
    """Builds the registered model `name` (see `list_models()`).

    Args:
        name: e.g. "resnet50", "ps_resnet50", "dps_resnet50" or
            "ps_resnext50_32x4d_official".
        **kwargs: arguments of `ResNet` (include_top, num_classes,
            classifier_activation, input_shape, pooling, feature_maps,
            weights, pattern, cyclic, dilation_rate, frozen_stages,
            norm_eval, dtype, name, ...). The conv type comes from the name.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}. Valid names: {', '.join(list_models())}."
        )
    if "conv" in kwargs:
        raise ValueError(
            "The conv type comes from the model name: use "
            f"{name.removeprefix('ps_')!r} or 'ps_{name.removeprefix('ps_')}', "
            "not `conv`."
        )
    return _REGISTRY[name](**kwargs)
