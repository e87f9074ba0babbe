"""ResNet, ResNeXt and SE-ResNet, each with standard or Poly-Scale 3x3 convs.

One functional builder, `ResNet`, driven by a table of stages; the named
architectures below only fill the table. The layout is torchvision's v1.5
(stride on the 3x3 conv, PyTorch padding), with layer names that follow its
state-dict keys (`layer2_0_conv2` for `layer2.0.conv2`), so that PyTorch
checkpoints map one to one. With `conv="psconv"`, every 3x3 conv in the
middle of a bottleneck block is a `PSConv2D`, as in the paper; the stem, the
1x1 and the shortcut convs stay standard.
"""

import dataclasses
import os

import keras

from psconv_tf.engine import arguments
from psconv_tf.layers.dynamic_ps_conv2d import DynamicPSConv2D
from psconv_tf.layers.native_conv import NativeConv2D
from psconv_tf.layers.official_ps_conv2d import OfficialPSConv2D
from psconv_tf.layers.ps_conv2d import PSConv2D

CONV_TYPES = ("standard", "psconv", "dynamic", "psconv_official")
BATCH_NORM = dict(momentum=0.9, epsilon=1e-5)  # PyTorch's defaults


def conv_init():
    """torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").

    A new initializer per layer: an unseeded Keras initializer fixes its
    seed when constructed, so one shared instance would give every conv of
    the same shape the same kernel."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: `blocks` residual blocks of `planes`, the first strided."""

    blocks: int
    planes: int
    stride: int


def imagenet_stages(blocks):
    return tuple(
        Stage(n, planes, stride)
        for n, planes, stride in zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2))
    )


def ResNet(
    stages,
    block="bottleneck",
    stem="imagenet",
    stem_filters=64,
    groups=1,
    width_per_group=64,
    se_reduction=None,
    conv="standard",
    pattern=(1, 2, 1, 4),
    cyclic="both",
    dilation_rate=1,
    dynamic_options=None,
    include_top=True,
    num_classes=1000,
    classifier_activation=None,
    input_shape=None,
    pooling=None,
    feature_maps=False,
    weights=None,
    frozen_stages=-1,
    norm_eval=False,
    dtype=None,
    name="resnet",
):
    """Builds a residual network from a table of stages.

    Args:
        stages: sequence of `Stage`.
        block: `"bottleneck"` (1x1, 3x3, 1x1, expansion 4) or `"basic"`
            (3x3, 3x3). PSConv in basic blocks replaces both 3x3 convs; that
            goes beyond the paper, which uses bottlenecks only.
        stem: `"imagenet"` (7x7/2 conv and 3x3/2 max pool) or `"cifar"`
            (one 3x3 conv, for 32x32 inputs).
        stem_filters: filters of the stem conv.
        groups: cardinality of the 3x3 convs (ResNeXt).
        width_per_group: bottleneck width per group at 64 planes (ResNeXt's d).
        se_reduction: if set, a squeeze-and-excitation unit with this
            reduction ratio on every residual branch (SE-ResNet).
        conv: `"standard"`, `"psconv"` (the paper's `PSConv2D`), `"dynamic"`
            (`DynamicPSConv2D`, which learns its lattice; freeze it with
            `psconv_tf.freeze`) or `"psconv_official"` (`OfficialPSConv2D`,
            the authors' released grouped layer, which keeps rate-1 kernels
            beside the dilated ones in most groups; the same as "psconv"
            for groups=1).
        pattern, cyclic, dilation_rate: passed to every `PSConv2D`.
        dynamic_options: dict of `DynamicPSConv2D` arguments (rates,
            factor_shapes, surrogate, ...) for `conv="dynamic"`.
        include_top: whether to end with global pooling and a classifier.
        num_classes: classifier outputs.
        classifier_activation: the classifier's activation, as in
            `keras.applications`: None (the default here: logits, which the
            training recipes and `from_logits=True` losses expect), "softmax"
            (`keras.applications`' default) or any Keras activation.
            Ignored without the top, as there.
        input_shape: input shape without batch; (224, 224, 3) or (32, 32, 3)
            by stem when None; spatial dimensions may be None.
        pooling: without the top, `None` (the last feature map), `"avg"` or
            `"max"` (global pooling).
        feature_maps: without the top, return a dict of the stage outputs
            named by stride as keras-hub's `pyramid_outputs` are, "Pk" at
            stride 2**k: {"P2": stride 4, ..., "P5": stride 32} for the
            ImageNet stem ({"P0", "P1", "P2"} for the CIFAR stem), for
            detection necks such as FPN. (They were named "C2", ...; `.keras`
            files saved so keep those names.)
        weights: `None` or the path of a Keras weights file
            (`.weights.h5`, `.keras`). No pretrained weights are hosted:
            `"imagenet"` is refused with a pointer to `load_torch`, which
            reads the authors' PyTorch checkpoints.
        frozen_stages: -1 (nothing frozen), 0 (the stem) or k >= 1 (the stem
            and stages 1..k) made not trainable, their BatchNorm layers
            included (which then normalize with their moving statistics), as
            detection fine-tuning does (mmdet's `frozen_stages`). Setting
            `model.trainable = True` afterwards unfreezes them.
        norm_eval: if True, every BatchNorm layer normalizes with its moving
            statistics and never updates them, also in training, while its
            scale and offset still train (mmdet's `norm_eval`): for the small
            per-device batches of detection.
        dtype: dtype policy of every layer (e.g. "bfloat16",
            "mixed_float16"); None for the global policy.
        name: model name.

    Returns:
        A functional `keras.Model`.
    """
    if conv not in CONV_TYPES:
        raise ValueError(
            f"Argument `conv` must be one of {CONV_TYPES}. Received: conv={conv!r}"
        )
    if block not in ("bottleneck", "basic"):
        raise ValueError(
            "Argument `block` must be 'bottleneck' or 'basic'. "
            f"Received: block={block!r}"
        )
    if stem not in ("imagenet", "cifar"):
        raise ValueError(
            f"Argument `stem` must be 'imagenet' or 'cifar'. Received: stem={stem!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            "Argument `pooling` must be None, 'avg' or 'max'. "
            f"Received: pooling={pooling!r}"
        )
    if include_top and (feature_maps or pooling is not None):
        raise ValueError(
            "`feature_maps` and `pooling` apply without the top: pass "
            "include_top=False."
        )
    if include_top and (not isinstance(num_classes, int) or num_classes <= 0):
        raise ValueError(
            "Argument `num_classes` must be a positive integer. "
            f"Received: num_classes={num_classes!r}"
        )
    if include_top and classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError):
            raise ValueError(
                "Argument `classifier_activation` must be None (logits), 'softmax' "
                "or another Keras activation. Received: "
                f"classifier_activation={classifier_activation!r}"
            ) from None
    if weights is not None:
        _check_weights(weights)
    if (
        not arguments.is_int(frozen_stages)
        or not -1 <= frozen_stages <= len(stages)
    ):
        raise ValueError(
            f"Argument `frozen_stages` must be an integer from -1 to {len(stages)} "
            f"(the number of stages). Received: frozen_stages={frozen_stages!r}"
        )
    if not isinstance(norm_eval, bool):
        raise ValueError(
            f"Argument `norm_eval` must be a bool. Received: norm_eval={norm_eval!r}"
        )
    if dtype is not None:
        dtype = keras.dtype_policies.get(dtype)
    if input_shape is None:
        input_shape = (224, 224, 3) if stem == "imagenet" else (32, 32, 3)
    psconv = dict(pattern=pattern, cyclic=cyclic, dilation_rate=dilation_rate)
    make_conv3x3 = {
        "standard": _conv3x3,
        "psconv": _psconv3x3(PSConv2D, psconv),
        "dynamic": _psconv3x3(DynamicPSConv2D, dynamic_options or {}),
        "psconv_official": _psconv3x3(OfficialPSConv2D, psconv),
    }[conv]

    inputs = keras.Input(input_shape, name="image")
    x = _stem(inputs, stem, stem_filters)
    features = {}
    in_filters = stem_filters
    stride = 4 if stem == "imagenet" else 1
    for index, stage in enumerate(stages, start=1):
        for number in range(stage.blocks):
            prefix = f"layer{index}_{number}_"
            block_stride = stage.stride if number == 0 else 1
            if block == "bottleneck":
                x, in_filters = _bottleneck(
                    x, in_filters, stage.planes, block_stride, groups,
                    width_per_group, se_reduction, make_conv3x3, prefix,
                )
            else:
                x, in_filters = _basic(
                    x, in_filters, stage.planes, block_stride, se_reduction,
                    make_conv3x3, prefix,
                )
        stride *= stage.stride
        features[f"P{stride.bit_length() - 1}"] = x  # P_k has stride 2**k

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
        outputs = keras.layers.Dense(num_classes, activation=classifier_activation, name="fc")(x)
    elif feature_maps:
        outputs = features
    elif pooling == "avg":
        outputs = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    elif pooling == "max":
        outputs = keras.layers.GlobalMaxPooling2D(name="maxpool")(x)
    else:
        outputs = x
    model = keras.Model(inputs, outputs, name=name)
    if dtype is not None or norm_eval:
        model = _rebuilt(model, dtype, norm_eval)
    _freeze_stages(model, frozen_stages)
    if weights is not None:
        try:
            model.load_weights(weights)
        except ValueError as error:  # Keras's message spans many lines
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise ValueError(
                f"Argument `weights`: {os.fspath(weights)!r} does not fit {name}: "
                + " ".join(lines[:2])
            ) from None
    return model


WEIGHTS_SUFFIXES = (".weights.h5", ".keras", ".weights.json")  # what load_weights reads
TORCH_SUFFIXES = (".pth", ".pt")


def _check_weights(weights):
    """Refuses, in one line, a `weights` argument that names no Keras
    weights file."""
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "Argument `weights` must be None or the path of a Keras weights file "
            f"({', '.join(WEIGHTS_SUFFIXES)}). Received: weights={weights!r}"
        )
    path = os.fspath(weights)
    if path.endswith(TORCH_SUFFIXES):
        raise ValueError(
            f"Argument `weights`: {path!r} is a PyTorch checkpoint; load it with "
            "psconv_tf.load_torch(model, path) after building the model."
        )
    if not path.endswith(WEIGHTS_SUFFIXES):
        raise ValueError(
            f"Argument `weights`: {path!r} is not a Keras weights file "
            f"({', '.join(WEIGHTS_SUFFIXES)}). No pretrained weights are hosted for "
            "the zoo: build it with weights=None and load the authors' ImageNet "
            "checkpoints (d-li14/PSConv: PS-ResNet-50/101, PS-ResNeXt-101 32x4d) or "
            "torchvision's with psconv_tf.load_torch(model, 'ps_resnet50.pth')."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Argument `weights`: no weights file at {path!r}.")


@keras.saving.register_keras_serializable(package="psconv_tf")
class FrozenStatisticsBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that always normalizes with its moving statistics
    and never updates them; gamma and beta still train (`norm_eval`)."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


def _rebuilt(model, dtype, norm_eval):
    """`model` with every layer in the policy `dtype` (if not None) and, with
    `norm_eval`, FrozenStatisticsBatchNormalization for BatchNormalization:
    one rewrite of the finished graph, so the builders stay policy-free."""

    def clone(layer):
        config = layer.get_config()
        if dtype is not None:
            config["dtype"] = dtype
        if norm_eval and type(layer) is keras.layers.BatchNormalization:
            return FrozenStatisticsBatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    (image,) = model.inputs
    inputs = keras.Input(batch_shape=image.shape, name=image._keras_history.operation.name)
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)


def stage_of(layer_name):
    """The stage index of a zoo layer: 0 for the stem, k for `layerk_*`, None
    for the head (avgpool, fc)."""
    prefix = layer_name.split("_", 1)[0]
    if prefix.startswith("layer") and prefix[5:].isdigit():
        return int(prefix[5:])
    return None if layer_name in ("avgpool", "fc") else 0


def _freeze_stages(model, frozen_stages):
    """Makes the layers of stages 0 (the stem) to `frozen_stages` untrainable."""
    for layer in model.layers:
        stage = stage_of(layer.name)
        if stage is not None and stage <= frozen_stages:
            layer.trainable = False


def _stem(x, stem, filters):
    if stem == "cifar":
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False,
            kernel_initializer=conv_init(), name="conv1",
        )(x)
    else:
        x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = keras.layers.Conv2D(
            filters, 7, strides=2, use_bias=False,
            kernel_initializer=conv_init(), name="conv1",
        )(x)
    x = keras.layers.BatchNormalization(name="bn1", **BATCH_NORM)(x)
    x = keras.layers.ReLU(name="relu")(x)
    if stem == "imagenet":
        # Zero padding equals PyTorch's -inf padding after a ReLU.
        x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    return x


def _conv3x3(filters, stride, groups, name):
    """A standard 3x3 conv with PyTorch's padding of 1."""

    def apply(x):
        if stride > 1:
            x = keras.layers.ZeroPadding2D(1, name=name + "_pad")(x)
        # Grouped: the native op, not Keras' XLA route on TensorFlow's CPU.
        conv = NativeConv2D if groups > 1 else keras.layers.Conv2D
        return conv(
            filters, 3, strides=stride, padding="same" if stride == 1 else "valid",
            groups=groups, use_bias=False, kernel_initializer=conv_init(), name=name,
        )(x)

    return apply


def _psconv3x3(layer_class, psconv):
    def make(filters, stride, groups, name):
        return layer_class(
            filters, 3, strides=stride, padding="symmetric", groups=groups,
            use_bias=False, kernel_initializer=conv_init(), name=name, **psconv,
        )

    return make


def _conv1x1(x, filters, name, stride=1):
    return keras.layers.Conv2D(
        filters, 1, strides=stride, use_bias=False,
        kernel_initializer=conv_init(), name=name,
    )(x)


def _batch_norm(x, name):
    return keras.layers.BatchNormalization(name=name, **BATCH_NORM)(x)


def _shortcut(x, in_filters, out_filters, stride, prefix):
    if stride == 1 and in_filters == out_filters:
        return x
    x = _conv1x1(x, out_filters, prefix + "downsample_0", stride)
    return _batch_norm(x, prefix + "downsample_1")


def _squeeze_excite(x, filters, reduction, prefix):
    scale = keras.layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "se_pool")(x)
    scale = keras.layers.Dense(
        filters // reduction, activation="relu", name=prefix + "se_fc1"
    )(scale)
    scale = keras.layers.Dense(filters, activation="sigmoid", name=prefix + "se_fc2")(scale)
    return keras.layers.Multiply(name=prefix + "se_scale")([x, scale])


def _bottleneck(x, in_filters, planes, stride, groups, width_per_group,
                se_reduction, make_conv3x3, prefix):
    width = int(planes * width_per_group / 64) * groups
    out_filters = planes * 4
    shortcut = _shortcut(x, in_filters, out_filters, stride, prefix)
    x = _conv1x1(x, width, prefix + "conv1")
    x = keras.layers.ReLU(name=prefix + "relu1")(_batch_norm(x, prefix + "bn1"))
    x = make_conv3x3(width, stride, groups, prefix + "conv2")(x)
    x = keras.layers.ReLU(name=prefix + "relu2")(_batch_norm(x, prefix + "bn2"))
    x = _batch_norm(_conv1x1(x, out_filters, prefix + "conv3"), prefix + "bn3")
    if se_reduction:
        x = _squeeze_excite(x, out_filters, se_reduction, prefix)
    x = keras.layers.Add(name=prefix + "add")([x, shortcut])
    return keras.layers.ReLU(name=prefix + "out")(x), out_filters


def _basic(x, in_filters, planes, stride, se_reduction, make_conv3x3, prefix):
    shortcut = _shortcut(x, in_filters, planes, stride, prefix)
    x = make_conv3x3(planes, stride, 1, prefix + "conv1")(x)
    x = keras.layers.ReLU(name=prefix + "relu1")(_batch_norm(x, prefix + "bn1"))
    x = make_conv3x3(planes, 1, 1, prefix + "conv2")(x)
    x = _batch_norm(x, prefix + "bn2")
    if se_reduction:
        x = _squeeze_excite(x, planes, se_reduction, prefix)
    x = keras.layers.Add(name=prefix + "add")([x, shortcut])
    return keras.layers.ReLU(name=prefix + "out")(x), planes
