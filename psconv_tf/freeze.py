"""Freezing: the static PSConv2D that a DynamicPSConv2D has learned."""

import keras

from psconv_tf.convert import _inputs_like
from psconv_tf.convert import _is_graph_model
from psconv_tf.layers.dynamic_ps_conv2d import DynamicPSConv2D
from psconv_tf.inspection import layers_of
from psconv_tf.layers.ps_conv2d import PSConv2D

# Arguments of DynamicPSConv2D that PSConv2D does not take.
_DYNAMIC_ARGUMENTS = (
    "rates", "factor_shapes", "surrogate", "mask_initializer",
    "initial_pattern", "mask_learning_rate_multiplier",
)


def freeze(model):
    """A copy of `model` with every `DynamicPSConv2D` frozen to a `PSConv2D`.

    Each dynamic layer becomes the static layer with its current learned
    dilation matrix, its name, kernel and bias; every other layer keeps its
    configuration and weights. The result computes the same function as the
    model in inference at the static cost, and exports like any zoo model
    (`psconv_tf.export`).

    Args:
        model: a functional or Sequential model (nested ones are frozen too).

    Returns:
        A new `keras.Model`, or `model` itself when it has no dynamic layer.

    Raises:
        ValueError: for a subclassed model with dynamic layers, or a dynamic
            layer that cannot be frozen (its name and the reason).
    """
    if not any(isinstance(layer, DynamicPSConv2D) for layer in layers_of(model)):
        return model
    if not _is_graph_model(model):
        raise ValueError(
            f"freeze() rewrites functional and Sequential models; "
            f"{type(model).__name__} is a subclassed model. Call `freeze()` on "
            "each DynamicPSConv2D layer instead."
        )
    frozen = {}

    def clone(layer):
        if isinstance(layer, DynamicPSConv2D):
            frozen[layer.name] = layer
            return PSConv2D.from_config(_frozen_config(layer))
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(
        model, input_tensors=_inputs_like(model), clone_function=clone,
        recursive=True,
    )
    _copy_weights(model, copy, frozen)
    return copy


def frozen_layer(layer):
    """The built static `PSConv2D` equal to the built `DynamicPSConv2D` `layer`."""
    static = PSConv2D.from_config(_frozen_config(layer))
    in_channels = layer.kernel.shape[2] * layer.groups
    shape = (None, None, None, in_channels)
    if layer.data_format == "channels_first":
        shape = (None, in_channels, None, None)
    static.build(shape)
    _copy_kernel(layer, static)
    return static


def _frozen_config(layer):
    layer._require_built("freeze")
    rates = layer.dilation_matrix()
    if layer.padding == "valid" and not (rates == layer.large_rate).any():
        raise ValueError(
            f"Layer {layer.name!r} has padding='valid' and has learned no "
            f"kernel at its large rate {layer.large_rate}: a static layer "
            "would change the output size. Use padding='same' or 'symmetric'."
        )
    config = layer.get_config()
    for name in _DYNAMIC_ARGUMENTS:
        config.pop(name)
    config["dilation_matrix"] = rates  # the block form, compacted at build
    return config


def _copy_kernel(dynamic, static):
    static.kernel.assign(dynamic.kernel)
    if dynamic.use_bias:
        static.bias.assign(dynamic.bias)


def _copy_weights(source, target, frozen):
    for old, new in zip(source.layers, target.layers):
        if isinstance(old, keras.Model):
            _copy_weights(old, new, frozen)
        elif old.name in frozen:
            _copy_kernel(old, new)
        elif old.weights:
            new.set_weights(old.get_weights())

