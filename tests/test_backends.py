"""The layer suite under Keras' JAX and PyTorch backends, and PyTorch's
torch.compile, in fresh processes."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# One process per backend and file, so that parallel workers share them out.
@pytest.mark.parametrize("suite", ["tests/test_ps_conv2d.py", "tests/test_ps_conv2d_matrix.py"])
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_layer_suite_passes_on_backend(backend, suite):
    environment = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "no:warnings", suite],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "passed" in summary and "skipped" not in summary, summary


TORCH_COMPILED = """
import functools, os, sys
import numpy as np, keras, torch
from torch._subclasses.fake_tensor import FakeTensorMode
import psconv_tf
from psconv_tf.engine import autotune

# TorchDynamo and AOTAutograd trace on fake tensors as with the default
# backend; only Inductor's code generation (minutes on 2 cores) is left out.
torch.compile = functools.partial(torch.compile, backend="aot_eager")
folder, cache = sys.argv[1], sys.argv[2]
with FakeTensorMode():  # a tracing stand-in is never measured
    assert not autotune._concrete(torch.empty(2, 8, 8, 8))
model = keras.saving.load_model(os.path.join(folder, "model.keras"))
assert model.jit_compile  # as saved: torch.compile
x = np.load(os.path.join(folder, "x.npy"))
np.testing.assert_allclose(
    model.predict(x, verbose=0), np.load(os.path.join(folder, "y.npy")), atol=1e-5
)
model.fit(x, np.zeros((2, 4, 4, 8), "float32"), verbose=0)
assert not os.path.exists(cache) or not os.listdir(cache), "measured inside a trace"
print("compiled fit and predict: ok")
"""


def test_torch_compiles_a_model_saved_with_jit_compile(tmp_path):
    # Saved here (TensorFlow), run under PyTorch with torch.compile, the
    # tuner on and its cache empty: nothing may be measured inside the trace.
    import keras
    import numpy as np

    from psconv_tf import PSConv2D

    inputs = keras.Input((8, 8, 8))
    model = keras.Model(inputs, PSConv2D(8, 3, strides=2, padding="same", groups=2)(inputs))
    model.compile("sgd", "mse", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(model(x)))
    model.save(tmp_path / "model.keras")
    environment = dict(os.environ, KERAS_BACKEND="torch", PSCONV_TF_AUTOTUNE="1")
    result = subprocess.run(
        [sys.executable, "-c", TORCH_COMPILED, str(tmp_path), str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env=dict(environment, PSCONV_TF_AUTOTUNE_CACHE=str(tmp_path / "cache")),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "compiled fit and predict: ok" in result.stdout
