"""Choosing PSConv2D's implementation by measurement, cached on disk.

All of `executor.IMPLEMENTATIONS` compute the same function; which is fastest
depends on the backend, the device, the shapes and the dtype. A layer with
`implementation="auto"` asks `choose` once per input shape and mode:

- When measuring is on and the inputs are concrete (an eager call: eager
  TensorFlow, JAX outside `jit`, PyTorch), every implementation is timed on
  this shape, dtype and device, forward+backward of sum(y ** 2) when
  training, forward otherwise (a warm-up, then interleaved rounds of
  compiled functions: `tf.function`, `jax.jit`, eager PyTorch), and the
  fastest is cached in memory and on disk.
- Inside a traced function (`tf.function`, XLA, `jax.jit`, `model.fit`,
  SavedModel/TFLite export), nothing can be timed: the choice cached for that
  key is used, else `default(layer)`. Run the model eagerly once first, or
  call `tune(model, inputs)`, to measure before tracing.
- `PSCONV_TF_AUTOTUNE=0` turns measuring and the cache off: "auto" is then
  always `default(layer)` ("masked" on a GPU under JAX; elsewhere "masked"
  up to MASKED_KERNELS kernels, else "split"), for deterministic tests and
  exports.
- The candidates (`candidates()`) are `executor.IMPLEMENTATIONS`, plus
  "fused" on a GPU under JAX only: elsewhere its kernels run in Pallas
  interpret mode, far too slowly to be a choice. No fixed default uses it.

The cache: one JSON file per key in `PSCONV_TF_AUTOTUNE_CACHE`, else
`$XDG_CACHE_HOME/psconv_tf/autotune` (~/.cache/...), named by the SHA-256 of
the key (backend, device, dtype, input shape, data format, the layer's
geometry and the digest of its dilation matrix, mode, candidates). Files are
written to a temporary name and renamed; a file that is not valid JSON for
its key is ignored with a warning and measured again. Nothing is unpickled.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings

import keras
import numpy as np

from psconv_tf import conv_ops
from psconv_tf import executor

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
CACHE_ENVIRONMENT = "PSCONV_TF_AUTOTUNE_CACHE"
ROUNDS = 5

_memory = {}
_forced = [False]


def enabled():
    """Whether measuring (and the cache) is on: PSCONV_TF_AUTOTUNE != "0"."""
    return _forced[0] or os.environ.get(ENVIRONMENT, "1").strip() not in ("0", "false", "off")


def cache_dir():
    root = os.environ.get(CACHE_ENVIRONMENT)
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "psconv_tf", "autotune")


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


def choose(layer, inputs, training):
    """The implementation for `layer` on `inputs` (see the module docstring)."""
    if not enabled():
        return default(layer)
    memo = (tuple(inputs.shape), str(inputs.dtype), bool(training), _forced[0])
    choices = layer.__dict__.setdefault("_autotune_choices", {})
    if memo in choices:
        return choices[memo]
    choice = _choose(layer, inputs, training)
    if choice is not None:
        choices[memo] = choice
        return choice
    return default(layer)


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
    choice = _load(text)
    if choice is None:
        if not _concrete(inputs):
            return None
        times = measure(layer, shape, inputs.dtype, training)
        choice = min(times, key=times.get)
        _store(text, choice, times)
    _memory[text] = choice
    return choice


@contextlib.contextmanager
def measuring():
    """Measures even where PSCONV_TF_AUTOTUNE=0 (used by `tune`)."""
    previous, _forced[0] = _forced[0], True
    try:
        yield
    finally:
        _forced[0] = previous


def tune(model, inputs, training=True):
    """Measures every "auto" PSConv2D of `model` on `inputs`, eagerly.

    Call it before `fit`, `jit` or export with a batch of the shape they
    will see; the choices land in the cache that traced calls read.
    """
    with measuring():
        model(inputs, training=training)


def measure(layer, shape, dtype, training):
    """Median seconds of every implementation on a random input of `shape`."""
    runs = {}
    x = keras.random.normal(shape, dtype=dtype, seed=0)
    for name in candidates():
        runs[name] = _runner(layer, layer.implementation_executor(name), x, training)
    for name, run in list(runs.items()):
        try:
            run()
        except Exception as error:  # noqa: BLE001 - any compiler's error
            if name not in executor.JAX_IMPLEMENTATIONS:
                raise
            # A kernel this device's compiler refuses is no candidate.
            warnings.warn(f"PSConv2D autotune skips {name!r}: {error}")
            del runs[name]
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

        @tf.function
        def forward(x, kernel):
            return run_plan(x, kernel)

        @tf.function
        def forward_backward(x, kernel):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = run_plan(x, kernel)
                loss = tf.reduce_sum(tf.square(tf.cast(y, "float32")))
            return tape.gradient(loss, [x, kernel])

        function = forward_backward if training else forward
        return lambda: tf.nest.map_structure(lambda t: t.numpy(), function(x, kernel))
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


def _concrete(inputs):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and hasattr(inputs, "numpy")
    if backend == "jax":
        import jax

        return not isinstance(inputs, jax.core.Tracer)
    return getattr(getattr(inputs, "device", None), "type", "meta") != "meta"


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


def _path(text):
    return os.path.join(cache_dir(), hashlib.sha256(text.encode()).hexdigest() + ".json")


def _load(text):
    path = _path(text)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
        if not isinstance(record, dict) or json.dumps(record.get("key"), sort_keys=True) != text:
            raise ValueError("its key differs")
        choice = record.get("choice")
        if choice not in candidates():
            raise ValueError(f"unknown implementation {choice!r}")
        return choice
    except (OSError, ValueError, UnicodeDecodeError) as error:
        warnings.warn(f"Ignoring PSConv2D autotune cache file {path}: {error}")
        return None


def _store(text, choice, times):
    record = {"key": json.loads(text), "choice": choice, "seconds": times}
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(record, file, indent=1, sort_keys=True)
            os.replace(temporary, _path(text))
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except OSError as error:
        warnings.warn(f"Could not write the PSConv2D autotune cache in {folder}: {error}")
