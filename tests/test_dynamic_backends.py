"""The DynamicPSConv2D layer under Keras' JAX and PyTorch backends, in fresh
processes: Eq. 3 in float64, the binary mask, channels first, round trip."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_dynamic_layer_suite_passes_on_backend(backend):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "no:warnings", "tests/test_dynamic_ps_conv2d.py",
         "-k", "eq3 or binary or channels_first or round_trip"],
        # JAX computes in float32 unless x64 is enabled; the references are float64.
        cwd=ROOT, env=dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1"),
        capture_output=True, text=True, timeout=1200,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "passed" in summary and "failed" not in summary, summary
