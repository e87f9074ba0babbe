"""Model graphs: walking the layers of a Keras model and rebuilding it.

The tools that rewrite or count a whole model (`convert`, `freeze`,
`profile`, `summary`, `rate_shares`) share these. Only functional and
Sequential models are graphs of layer calls that can be rebuilt; a subclassed
model's `call()` cannot be seen.

Invariants: `layers_of` yields leaf layers (never a model) in the order of
`model.layers`, depth first into nested models; `rebuild` keeps the names of
the model's inputs, so inputs fed by name still feed the copy; `copy_weights`
pairs the layers of a model and of its rebuilt copy by position, which
`rebuild` preserves.
"""

import keras


def layers_of(model):
    """Every layer of `model` that is not a model, nested models included, in
    order (nothing for an object without layers)."""
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, keras.Model):
            yield from layers_of(layer)
        else:
            yield layer


def is_graph_model(model):
    """Whether `model` is a functional or Sequential model (a graph of layer
    calls), which can be rebuilt layer by layer."""
    # Functional models are `keras.Function`s: graphs of layer calls.
    return isinstance(model, (keras.Sequential, keras.Function))


def inputs_like(model):
    """New inputs with the shapes, dtypes and names of the model's input
    layers (None for a Sequential model, which makes its own)."""
    if isinstance(model, keras.Sequential):
        return None
    return keras.tree.map_structure(
        lambda tensor: keras.Input(
            batch_shape=tensor.shape,
            dtype=tensor.dtype,
            name=tensor._keras_history.operation.name,
        ),
        model.input,
    )


def rebuild(model, clone_function):
    """A copy of the graph model `model`, nested models included, in which
    each layer is `clone_function(layer)`; the inputs keep their names, which
    `keras.models.clone_model` would otherwise change. Weights are not copied
    (see `copy_weights`)."""
    return keras.models.clone_model(
        model,
        input_tensors=inputs_like(model),
        clone_function=clone_function,
        recursive=True,
    )


def copy_layer_weights(source, target):
    """Copies the weights of the layer `source` into the layer `target`."""
    if source.weights:
        target.set_weights(source.get_weights())


def copy_weights(source, target, copy_layer=copy_layer_weights):
    """Calls `copy_layer(old, new)` for each pair of leaf layers of the model
    `source` and of its rebuilt copy `target`, nested models included."""
    for old, new in zip(source.layers, target.layers):
        if isinstance(old, keras.Model):
            copy_weights(old, new, copy_layer)
        else:
            copy_layer(old, new)
