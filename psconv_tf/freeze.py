"""Freezing a model: the static PSConv2D layers its DynamicPSConv2D layers
have learned (one layer freezes itself: `DynamicPSConv2D.freeze`)."""

from psconv_tf import graph
from psconv_tf.layers.dynamic_ps_conv2d import DynamicPSConv2D
from psconv_tf.layers.ps_conv2d import PSConv2D


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
    if not any(isinstance(layer, DynamicPSConv2D) for layer in graph.layers_of(model)):
        return model
    if not graph.is_graph_model(model):
        raise ValueError(
            f"freeze() rewrites functional and Sequential models; "
            f"{type(model).__name__} is a subclassed model. Call `freeze()` on "
            "each DynamicPSConv2D layer instead."
        )

    def clone(layer):
        if isinstance(layer, DynamicPSConv2D):
            return PSConv2D.from_config(layer.frozen_config())
        return layer.__class__.from_config(layer.get_config())

    def copy_layer(old, new):
        if isinstance(old, DynamicPSConv2D):
            old.copy_weights_to(new)
        else:
            graph.copy_layer_weights(old, new)

    copy = graph.rebuild(model, clone)
    graph.copy_weights(model, copy, copy_layer)
    return copy
