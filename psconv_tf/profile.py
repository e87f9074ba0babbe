"""Exact parameter and multiply-accumulate counts of a Keras model."""

import math

import keras

from psconv_tf import graph
from psconv_tf.layers.dynamic_ps_conv2d import DynamicPSConv2D
from psconv_tf.layers.base import PSConvBase
from psconv_tf.layers.official_ps_conv2d import OfficialPSConv2D


def profile(model, input_shape=None):
    """Trainable parameters and multiply-accumulates (MACs) of one example.

    MACs count the convolution (`Conv1D/2D/3D`, `DepthwiseConv2D`, `PSConv2D`)
    and `Dense` layers, the way papers count "FLOPs" (ResNet-50: 4.089 GMACs at
    224x224); a PSConv2D has exactly the MACs of the Conv2D it replaces. A
    layer called several times counts every call.

    A `DynamicPSConv2D` counts as the static layer it freezes to; a model
    with dynamic layers also gets "latent_params", their latent mask factors
    (included in "params", which freezing removes), and "training_macs",
    the MACs of the forward pass while they are dynamic: one full
    convolution per rate, twice the static MACs for two rates.

    An `OfficialPSConv2D` counts the weights of its `rate1_kernel` that
    compute (`rate1_parameters()`), not the zeros it holds elsewhere, and
    their MACs.

    Args:
        model: a built functional or Sequential model.
        input_shape: input shape without batch, to count at another size than
            the model's own (which may have None spatial dimensions).

    Returns:
        dict with "params" and "macs" (ints), and "latent_params" and
        "training_macs" for a model with dynamic layers.
    """
    if input_shape is not None:
        model = keras.models.clone_model(
            model, input_tensors=keras.Input(tuple(input_shape))
        )
    held_zeros = sum(
        math.prod(layer.rate1_kernel.shape) - layer.rate1_parameters()
        for layer in graph.layers_of(model)
        if isinstance(layer, OfficialPSConv2D) and layer.trainable
    )
    counts = {
        "params": sum(math.prod(w.shape) for w in model.trainable_weights) - held_zeros,
        "macs": _macs(model),
    }
    dynamic = [layer for layer in graph.layers_of(model) if isinstance(layer, DynamicPSConv2D)]
    if dynamic:
        counts["latent_params"] = sum(layer.latent_parameters() for layer in dynamic)
        counts["training_macs"] = _macs(model, training=True)
    return counts


COUNTED_LAYERS = (
    keras.layers.Dense,
    keras.layers.DepthwiseConv2D,
    PSConvBase,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)


def _macs(model, training=False):
    total = 0
    for layer in graph.layers_of(model):
        if isinstance(layer, COUNTED_LAYERS):
            for node in layer._inbound_nodes:
                total += _layer_macs(
                    layer, node.input_tensors[0].shape,
                    node.output_tensors[0].shape, training,
                )
    return total


def _layer_macs(layer, input_shape, output_shape, training=False):
    if any(d is None for d in tuple(input_shape[1:]) + tuple(output_shape[1:])):
        raise ValueError(
            f"Layer {layer.name!r} has unknown dimensions {tuple(input_shape)}: "
            "pass `input_shape` to count MACs at a given size."
        )
    if training and isinstance(layer, DynamicPSConv2D):
        return layer.training_macs(tuple(input_shape[1:]))
    if isinstance(layer, PSConvBase):
        return layer.macs(tuple(input_shape[1:]))
    if isinstance(layer, keras.layers.Dense):
        positions = math.prod(output_shape[1:-1])
        return positions * input_shape[-1] * layer.units
    channels_last = layer.data_format == "channels_last"
    in_channels = input_shape[-1] if channels_last else input_shape[1]
    spatial = output_shape[1:-1] if channels_last else output_shape[2:]
    out_channels = output_shape[-1] if channels_last else output_shape[1]
    window = math.prod(layer.kernel_size)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return math.prod(spatial) * window * out_channels
    return math.prod(spatial) * window * (in_channels // layer.groups) * out_channels
