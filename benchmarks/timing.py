"""Compiled forward and forward+backward of a Keras layer or model, per backend.

The backward pass differentiates the loss sum(y ** 2): its upstream gradient
2y depends on the data, as in training (with sum(y) TensorFlow folds the
constant gradient and flatters every ratio). TensorFlow runs `tf.function`,
JAX `jax.jit` of the stateless call, PyTorch eager mode.
"""

import inspect
import time

import keras
import numpy as np


def runners(layer, x):
    """{"forward": fn, "forward+backward": fn}; each fn blocks until done."""
    if not layer.built:
        layer.build(x.shape)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow(layer, x)
    if backend == "jax":
        return _jax(layer, x)
    return _torch(layer, x)


def _tensorflow(layer, x):
    import tensorflow as tf

    x = tf.convert_to_tensor(x)

    @tf.function
    def forward():
        return layer(x)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    return {
        "forward": lambda: forward().numpy(),
        "forward+backward": lambda: forward_backward()[0].numpy(),
    }


def _jax(layer, x):
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(x)
    trainable = [v.value for v in layer.trainable_variables]
    fixed = [v.value for v in layer.non_trainable_variables]

    extra = {"training": True} if "training" in inspect.signature(layer.call).parameters else {}

    def loss(trainable, x):
        y, _ = layer.stateless_call(trainable, fixed, x, **extra)
        return jnp.sum(y * y)

    forward = jax.jit(lambda trainable, x: layer.stateless_call(trainable, fixed, x)[0])
    gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return {
        "forward": lambda: jax.block_until_ready(forward(trainable, x)),
        "forward+backward": lambda: jax.block_until_ready(gradient(trainable, x)),
    }


def _torch(layer, x):
    import torch

    x = torch.as_tensor(np.asarray(x))

    def forward():
        with torch.no_grad():
            return layer(x)

    def forward_backward():
        inputs = x.clone().requires_grad_(True)
        for weight in layer.trainable_weights:
            weight.value.grad = None
        y = layer(inputs, training=True)
        (y * y).sum().backward()
        return inputs.grad

    return {"forward": forward, "forward+backward": forward_backward}


def interleaved_medians(runs, rounds, warmup=2):
    """Median seconds of each of `runs` ({key: fn}), timed in interleaved rounds."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(value)) for key, value in times.items()}
