"""The DynamicPSConv2D suite under Keras' JAX and PyTorch backends, in fresh
processes (its tf.GradientTape tests skip there)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_dynamic_layer_suite_passes_on_backend(backend):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "no:warnings", "tests/test_dynamic_ps_conv2d.py"],
        # JAX computes in float32 unless x64 is enabled; the references are float64.
        cwd=ROOT, env=dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1"),
        capture_output=True, text=True, timeout=1200,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "passed" in summary and "failed" not in summary, summary
