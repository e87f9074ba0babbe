"""PSConv for any functional or Sequential Keras model."""

import keras

from psconv_tf import graph
from psconv_tf.engine import lattice
from psconv_tf.layers.native_conv import NativeConv2D
from psconv_tf.layers.official_ps_conv2d import OfficialPSConv2D
from psconv_tf.layers.ps_conv2d import PSConv2D

# Convolutions that convert: Keras' own, and the zoo's grouped twin of it.
PLAIN_CONVS = (keras.layers.Conv2D, NativeConv2D)


def convert(
    model,
    predicate=None,
    pattern=(1, 2, 1, 4),
    cyclic="both",
    layout="blocked",
    dilation_rate=1,
    transfer_kernels=False,
    official=False,
):
    """A copy of `model` in which chosen `Conv2D` layers are `PSConv2D`.

    Every other layer keeps its configuration and weights. A converted layer
    keeps its name, filters, kernel size, strides, groups, bias, activation,
    initializers, regularizers and constraints, and gets the same output
    shape.

    Args:
        model: a functional or Sequential model (nested ones are converted
            too), e.g. `keras.applications.ResNet50(weights=None)`.
        predicate: `fn(layer) -> bool` choosing among the `Conv2D` layers.
            Default: every 3x3 conv with `padding="same"` and no dilation whose
            channels fit groups x t, where t = len(pattern).
        pattern, cyclic, layout, dilation_rate: for the new `PSConv2D` layers.
        transfer_kernels: copy the kernels (and biases) of converted layers,
            each kernel to its place; else they are initialized anew, as when
            training from scratch.
        official: if True, grouped layers (groups > 1) become
            `OfficialPSConv2D`, the authors' released grouped layer, whose
            `rate1_kernel` starts anew (also with `transfer_kernels`, which
            copies the kernel); the official lattice only (even `pattern`,
            cyclic "both", layout "blocked", dilation_rate 1).

    Returns:
        A new `keras.Model`.

    Raises:
        ValueError: for a layer, an unbuilt Sequential or a subclassed model,
            a chosen layer that cannot become a PSConv2D, or when no layer
            would be converted (the message says which and why).
    """
    if isinstance(model, keras.layers.Layer) and not isinstance(model, keras.Model):
        raise ValueError(
            f"convert() takes a model; got the layer {model.name!r} "
            f"({type(model).__name__}). Use PSConv2D in place of the layer, or "
            "convert a model that contains it."
        )
    if isinstance(model, keras.Sequential) and not model.built:
        raise ValueError(
            f"Sequential model {model.name!r} is not built: give it an "
            "`keras.Input(shape)` first, or call `model.build(input_shape)`, "
            "then convert it."
        )
    if not graph.is_graph_model(model):
        raise ValueError(
            f"convert() rewrites functional and Sequential models; "
            f"{type(model).__name__} is a subclassed model, whose call() it "
            "cannot see. Use PSConv2D in its code instead."
        )
    pattern = lattice.validate_pattern(pattern)
    if official:  # its constructor refuses other lattices, naming the argument
        OfficialPSConv2D(len(pattern), 3, pattern=pattern, cyclic=cyclic,
                         layout=layout, dilation_rate=dilation_rate)
    _check_some_chosen(model, predicate, pattern, cyclic)
    chosen = set()

    def clone(layer):
        config = layer.get_config()
        if type(layer) in PLAIN_CONVS and _chosen(layer, predicate, pattern, cyclic):
            _check_convertible(layer, pattern, cyclic)
            chosen.add(layer.name)
            layer_class = OfficialPSConv2D if official and layer.groups > 1 else PSConv2D
            return layer_class.from_config(
                _psconv_config(config, pattern, cyclic, layout, dilation_rate)
            )
        return layer.__class__.from_config(config)

    converted = graph.rebuild(model, clone)
    skip = set() if transfer_kernels else chosen

    def copy_layer(old, new):
        if old.name not in skip:
            if isinstance(new, OfficialPSConv2D):  # the rate-1 kernels start anew
                new.kernel.assign(old.kernel)
                if new.use_bias:
                    new.bias.assign(old.bias)
                return
            graph.copy_layer_weights(old, new)

    graph.copy_weights(model, converted, copy_layer)
    return converted


def _conv2d_layers(model):
    """The `Conv2D` layers of `model` and of the models nested in it."""
    return [layer for layer in graph.layers_of(model) if type(layer) in PLAIN_CONVS]


def _check_some_chosen(model, predicate, pattern, cyclic):
    """Raises unless at least one Conv2D layer would be converted."""
    convs = _conv2d_layers(model)
    if any(_chosen(layer, predicate, pattern, cyclic) for layer in convs):
        return
    if not convs:
        reason = ("it has no Conv2D layers (depthwise and separable convolutions "
                  "are not converted)")
    elif predicate is not None:
        reason = f"the predicate chose none of its {len(convs)} Conv2D layers"
    else:
        reason = (f"none of its {len(convs)} Conv2D layers is a 3x3 'same' "
                  f"undilated convolution whose channels fit groups x {len(pattern)} "
                  "(pass a predicate to choose layers)")
    raise ValueError(f"convert() would convert no layer of model {model.name!r}: {reason}.")


def _in_channels(layer):
    return layer.kernel.shape[2] * layer.groups


def _chosen(layer, predicate, pattern, cyclic):
    if predicate is not None:
        return bool(predicate(layer))
    fits = True
    try:
        lattice.check_channels(
            _in_channels(layer), layer.filters, layer.groups, len(pattern), cyclic
        )
    except ValueError:
        fits = False
    return (
        fits
        and tuple(layer.kernel_size) == (3, 3)
        and layer.padding == "same"
        and tuple(layer.dilation_rate) == (1, 1)
    )


def _check_convertible(layer, pattern, cyclic):
    if layer.padding != "same":
        raise ValueError(
            f"Layer {layer.name!r} has padding={layer.padding!r}: as a PSConv2D "
            "its output would shrink by the largest rate; only 'same' convs "
            "keep their output shape."
        )
    if tuple(layer.dilation_rate) != (1, 1):
        raise ValueError(
            f"Layer {layer.name!r} is dilated ({layer.dilation_rate}): pass the "
            "base rate as `dilation_rate` to convert() instead."
        )
    try:
        lattice.check_channels(
            _in_channels(layer), layer.filters, layer.groups, len(pattern), cyclic
        )
    except ValueError as error:
        raise ValueError(f"Layer {layer.name!r} cannot become a PSConv2D: {error}")


def _psconv_config(config, pattern, cyclic, layout, dilation_rate):
    config = dict(config)
    for key in ("lora_rank", "lora_alpha"):
        config.pop(key, None)
    config.update(
        pattern=list(pattern),
        cyclic=cyclic,
        layout=layout,
        dilation_rate=dilation_rate,
    )
    return config

