"""Choosing PSConv2D's implementation by measurement, cached on disk.

All of `executor.IMPLEMENTATIONS` compute the same function; which is fastest
depends on the backend, the device, the shapes and the dtype. A layer with
`implementation="auto"` asks `choose` once per input shape and mode:

- When measuring is on and the inputs are concrete (an eager call: eager
  TensorFlow, JAX outside `jit`, PyTorch outside `torch.compile`), every
  implementation is timed on this shape, dtype and device, forward+backward
  of sum(y ** 2) when training, forward otherwise (a warm-up, then
  interleaved rounds of compiled functions: one concrete `tf.function`
  each, `jax.jit`, eager PyTorch), and the fastest is cached in memory and
  on disk. The first measurement of a process says so in one line (on
  stderr, or in the absl log where Keras' interactive logging is off).
- Inside a traced function (`tf.function`, XLA, `jax.jit`, `torch.compile`
  and its fake tensors, `model.fit`, SavedModel/TFLite export), nothing is
  timed: the choice cached for that key is used, else `default(layer)`
  (under `torch.compile`, this process's choice: reading files there would
  break the graph; for a batch of unknown size, this process's choice at
  another batch size). Run the model eagerly once first, or call
  `model_tuning.tune(model, data)`, to measure before tracing: the trainer
  does so on its first real batch, and `model_tuning.TuneCallback` for
  `model.fit`.
- `PSCONV_TF_AUTOTUNE=0` turns measuring and the cache off: "auto" is then
  always `default(layer)` ("masked" on a GPU under JAX; elsewhere "masked"
  up to MASKED_KERNELS kernels, else "split"), for deterministic tests and
  exports.
- The candidates (`candidates()`) are `executor.IMPLEMENTATIONS`, plus
  "fused" on a GPU under JAX only: elsewhere its kernels run in Pallas
  interpret mode, far too slowly to be a choice. No fixed default uses it.

- Inside `branch_free()` (exports) and under `torch.compile`, a layer that
  would run "masked" runs DEFAULT: the same function without "masked"'s
  run-time check for Inf and NaN, a branch that TFLite's integer
  quantization cannot calibrate and that torch.cond cannot hold (Keras ops
  record names as they run).

The cache (`autotune_cache`): one small JSON record per key (backend,
device, dtype, input shape, data format, the layer's geometry and the digest
of its dilation matrix, mode, candidates); a record that cannot be read is
"not cached", with one warning, and is measured again.
"""

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings

import keras
import numpy as np

from psconv_tf.engine import autotune_cache
from psconv_tf.engine import conv_ops
from psconv_tf.engine import executor

# The default where nothing is measured: "masked" for layers of at most
# MASKED_KERNELS kernels (in_channels // groups * filters), "split" above.
# On a 2-core CPU (TensorFlow 2.21) "masked" ran fastest at 16@28² and
# 32@14² and at ResNeXt's 4 channels per group, "split" at ResNet-50's sizes.
# On a GPU under JAX "masked" is the default at every size: on an H100 it ran
# fastest at up to 128 channels and within 1.35x of "grouped" (the fastest)
# at 256 and 512, forward+backward; "split" ran 3-6x a Conv2D there (many
# small convolutions). With it ps_resnet50 trained at 0.73x resnet50's
# throughput, against 0.13x before; see benchmarks/accelerator_speed.py.
DEFAULT = "split"
MASKED_KERNELS = 1024
ENVIRONMENT = "PSCONV_TF_AUTOTUNE"
CACHE_ENVIRONMENT = autotune_cache.ENVIRONMENT
ROUNDS = 5

_memory = {}
_forced = [False]
_announced = [False]
_branch_free = [False]
# While `tune` runs: the mode measured (training or not) and the choices made.
_tuning = [None]


def enabled():
    """Whether measuring (and the cache) is on: PSCONV_TF_AUTOTUNE != "0"."""
    return _forced[0] or os.environ.get(ENVIRONMENT, "1").strip() not in ("0", "false", "off")


def default(layer):
    """The implementation used where nothing is measured (see MASKED_KERNELS)."""
    if conv_ops.jax_on_gpu():
        return "masked"
    kernels = layer.kernel.shape[2] * layer.kernel.shape[3]
    return "masked" if kernels <= MASKED_KERNELS else DEFAULT


def candidates():
    """The implementations `measure` times on this backend and device."""
    if conv_ops.jax_on_gpu():
        return executor.IMPLEMENTATIONS + executor.JAX_IMPLEMENTATIONS
    return executor.IMPLEMENTATIONS


def implementation(layer, inputs, training):
    """The implementation `layer` runs on `inputs`: its own, or for "auto"
    `choose`'s; DEFAULT in place of "masked" inside `branch_free()` and
    under torch.compile (whose traced branches cannot hold Keras ops)."""
    name = layer.implementation
    if name == "auto":
        name = choose(layer, inputs, training)
    if name == "masked" and (_branch_free[0] or _torch_compiling()):
        return DEFAULT
    return name


@contextlib.contextmanager
def branch_free():
    """Traces PSConv2D layers without data-dependent branches (exports).

    "masked" checks its inputs for Inf and NaN at run time
    (`executor.masked_sum`), a branch that TFLite's integer quantization
    cannot calibrate. Inside this context a layer that would run "masked",
    pinned or chosen, runs DEFAULT instead: the same function, no branch.
    """
    previous, _branch_free[0] = _branch_free[0], True
    try:
        yield
    finally:
        _branch_free[0] = previous


def choose(layer, inputs, training):
    """The implementation for `layer` on `inputs` (see the module docstring)."""
    if _torch_compiling():
        return _compiling_choice(layer, inputs, training)
    if not enabled():
        return default(layer)
    if _tuning[0] is not None:
        training = _tuning[0]["training"]
    memo = (tuple(inputs.shape), str(inputs.dtype), bool(training))
    choices = layer.__dict__.setdefault("_autotune_choices", {})
    if memo not in choices:
        choice = _choose(layer, inputs, training) or _any_batch_size(choices, memo)
        if choice is None:
            return default(layer)
        choices[memo] = choice
    if _tuning[0] is not None:
        _tuning[0]["choices"][layer.path] = choices[memo]
    return choices[memo]


def _choose(layer, inputs, training):
    """A measured or cached choice, or None (nothing measured, nothing to
    measure with)."""
    shape = tuple(inputs.shape)
    if any(not isinstance(d, int) for d in shape):
        return None
    key = _key(layer, shape, keras.backend.standardize_dtype(inputs.dtype), training)
    text = json.dumps(key, sort_keys=True)
    if text in _memory:
        return _memory[text]
    choice = autotune_cache.load(text)
    if choice is None:
        if not _concrete(inputs):
            return None
        _announce()
        times = measure(layer, shape, inputs.dtype, training)
        choice = min(times, key=times.get)
        autotune_cache.store(text, choice, times)
    _memory[text] = choice
    return choice


def _any_batch_size(choices, memo):
    """For a trace of unknown batch size (an evaluation step traced with
    `reduce_retracing`), this layer's choice for the same other dimensions,
    dtype and mode, else None."""
    shape, dtype, training = memo
    if shape[0] is not None or any(d is None for d in shape[1:]):
        return None
    for (known, known_dtype, known_training), choice in choices.items():
        if known[1:] == shape[1:] and (known_dtype, known_training) == (dtype, training):
            return choice
    return None


def _compiling_choice(layer, inputs, training):
    """The choice under torch.compile: this process's choice for the shape,
    else the default. TorchDynamo follows this code: reading the cache file
    here would break the graph in every layer."""
    memo = (tuple(inputs.shape), str(inputs.dtype), bool(training))
    choice = layer.__dict__.get("_autotune_choices", {}).get(memo)
    return choice if choice is not None and enabled() else default(layer)


def _announce():
    """Says once per process what is measured and where it is cached."""
    if _announced[0]:
        return
    _announced[0] = True
    message = (
        "PSConv2D(implementation='auto'): timing its implementations on the "
        "first eager call for each input shape (forward, and backward when "
        f"training); the choices are cached in {autotune_cache.cache_dir()}. Set "
        f"{ENVIRONMENT}=0 to skip this and use the defaults."
    )
    if keras.config.is_interactive_logging_enabled():
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    else:
        from absl import logging

        logging.info(message)


@contextlib.contextmanager
def measuring():
    """Measures even where PSCONV_TF_AUTOTUNE=0 (used by `tuning`)."""
    previous, _forced[0] = _forced[0], True
    try:
        yield
    finally:
        _forced[0] = previous


@contextlib.contextmanager
def tuning(training):
    """Measures every "auto" layer called inside, for `training` whatever
    mode the call runs in; yields the {layer path: choice} it fills (used by
    `model_tuning.tune`)."""
    choices = {}
    previous, _tuning[0] = _tuning[0], {"training": bool(training), "choices": choices}
    try:
        with measuring():
            yield choices
    finally:
        _tuning[0] = previous


def measure(layer, shape, dtype, training):
    """Median seconds of every implementation on a random input of `shape`."""
    runs = {}
    x = keras.random.normal(shape, dtype=dtype, seed=0)
    for name in candidates():
        try:
            run = _runner(layer, layer.implementation_executor(name), x, training)
            run()  # compiles
        except Exception as error:  # noqa: BLE001 - any compiler's error
            if name not in executor.JAX_IMPLEMENTATIONS:
                raise
            # A kernel this device's compiler refuses is no candidate.
            warnings.warn(f"PSConv2D autotune skips {name!r}: {error}")
            continue
        runs[name] = run
    times = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def _runner(layer, run_plan, x, training):
    """A compiled call of one implementation (inputs in compute format)."""
    backend = keras.backend.backend()
    kernel = keras.ops.cast(layer.kernel.value, x.dtype)
    if backend == "tensorflow":
        import tensorflow as tf

        def forward(x, kernel):
            return run_plan(x, kernel)

        def forward_backward(x, kernel):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = run_plan(x, kernel)
                loss = tf.reduce_sum(tf.square(tf.cast(y, "float32")))
            return tape.gradient(loss, [x, kernel])

        # Traced once, here, and called as a concrete function: calling a new
        # tf.function per implementation and layer would count as retracing.
        function = tf.function(forward_backward if training else forward)
        concrete = function.get_concrete_function(x, kernel)
        return lambda: tf.nest.map_structure(lambda t: t.numpy(), concrete(x, kernel))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def loss(x, kernel):
            return jnp.sum(jnp.square(run_plan(x, kernel).astype("float32")))

        function = jax.jit(jax.grad(loss, argnums=(0, 1)) if training else run_plan)
        return lambda: jax.block_until_ready(function(x, kernel))
    import torch

    def forward():
        with torch.no_grad():
            return run_plan(x, kernel)

    def forward_backward():
        inputs = x.detach().clone().requires_grad_(True)
        weights = kernel.detach().clone().requires_grad_(True)
        y = run_plan(inputs, weights)
        (y.float() ** 2).sum().backward()

    return forward_backward if training else forward


def _torch_compiling():
    """Whether TorchDynamo is tracing the caller (torch.compile)."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.compiler.is_compiling()


def _concrete(inputs):
    """Whether `inputs` holds values (an eager call), not a trace's stand-in."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and hasattr(inputs, "numpy")
    if backend == "jax":
        import jax

        return not isinstance(inputs, jax.core.Tracer)
    import torch

    if not isinstance(inputs, torch.Tensor) or inputs.device.type == "meta":
        return False
    if torch.compiler.is_compiling():
        return False
    from torch._subclasses import fake_tensor
    from torch._subclasses import functional_tensor

    return not (
        fake_tensor.is_fake(inputs)
        or isinstance(inputs, functional_tensor.FunctionalTensor)
    )


def _device():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{getattr(device, 'device_kind', '')}"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "cuda:" + torch.cuda.get_device_name(0)
        return f"cpu:{os.cpu_count()}"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"gpu:{len(gpus)}" if gpus else f"cpu:{os.cpu_count()}"


def _key(layer, shape, dtype, training):
    return {
        "backend": keras.backend.backend(),
        "device": _device(),
        "dtype": dtype,
        "input_shape": list(shape),
        "data_format": layer.data_format,
        "filters": layer.filters,
        "kernel_size": list(layer.kernel_size),
        "strides": list(layer.strides),
        "padding": layer.padding,
        "groups": layer.groups,
        "matrix": matrix_digest(layer.dilation_matrix()),
        "mode": "train" if training else "infer",
        "candidates": list(candidates()),
    }


def matrix_digest(matrix):
    """A short digest of a dilation matrix, for cache keys."""
    return hashlib.sha256(np.ascontiguousarray(matrix, np.int64).tobytes()).hexdigest()[:16]
