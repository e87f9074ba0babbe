"""The implementation tuner: measuring, the on-disk cache, traced calls."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from psconv_tf import PSConv2D
from psconv_tf import autotune
from psconv_tf.executor import IMPLEMENTATIONS


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    """Measuring on, a fresh cache folder and memory, and a measurement log."""
    monkeypatch.setenv(autotune.ENVIRONMENT, "1")
    monkeypatch.setenv(autotune.CACHE_ENVIRONMENT, str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "_memory", {})
    calls = []
    real = autotune.measure

    def logged(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(autotune, "measure", logged)
    return tmp_path / "cache", calls


def _layer():
    return PSConv2D(8, 3, padding="same", groups=2)


def _x(batch=2):
    return np.random.default_rng(0).normal(size=(batch, 9, 9, 8)).astype("float32")


def _files(folder):
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_eager_call_measures_caches_and_computes_the_same(tuner):
    folder, calls = tuner
    layer = _layer()
    y = ops.convert_to_numpy(layer(_x()))
    assert calls == [(2, 9, 9, 8)]
    (name,) = _files(folder)
    record = json.loads((folder / name).read_text())
    assert record["choice"] in IMPLEMENTATIONS
    assert set(record["seconds"]) == set(IMPLEMENTATIONS)
    assert record["key"]["mode"] == "infer" and record["key"]["input_shape"] == [2, 9, 9, 8]
    for implementation in IMPLEMENTATIONS:
        pinned = PSConv2D(8, 3, padding="same", groups=2, implementation=implementation)
        pinned.build((2, 9, 9, 8))
        pinned.set_weights(layer.get_weights())
        np.testing.assert_allclose(ops.convert_to_numpy(pinned(_x())), y, rtol=1e-5, atol=1e-5)


def test_the_cache_is_read_back_per_key(tuner, monkeypatch):
    folder, calls = tuner
    monkeypatch.setattr(
        autotune, "measure",
        lambda *args: calls.append(args[1]) or {"split": 2.0, "grouped": 3.0, "masked": 1.0},
    )
    _layer()(_x())
    monkeypatch.setattr(autotune, "_memory", {})  # a new process
    layer = _layer()
    layer(_x())
    assert calls == [(2, 9, 9, 8)]  # the second layer read the file
    assert autotune.choose(layer, _x(), False) == "masked"
    layer(_x(batch=3))  # another shape is another key
    assert calls == [(2, 9, 9, 8), (3, 9, 9, 8)] and len(_files(folder)) == 2


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\x80\x04\x95pickle", json.dumps({"key": {}, "choice": "split"}).encode(),
     b"[1, 2]", None],
)
def test_bad_cache_files_are_ignored_with_a_warning(tuner, monkeypatch, content):
    folder, calls = tuner
    layer = _layer()
    layer(_x())
    (name,) = _files(folder)
    record = json.loads((folder / name).read_text())
    if content is None:  # a valid file naming an unknown implementation
        record["choice"] = "os.system"
        content = json.dumps(record).encode()
    (folder / name).write_bytes(content)
    monkeypatch.setattr(autotune, "_memory", {})
    with pytest.warns(UserWarning, match="Ignoring PSConv2D autotune cache"):
        _layer()(_x())
    assert len(calls) == 2  # measured again, and the file repaired
    assert json.loads((folder / name).read_text())["choice"] in IMPLEMENTATIONS


def test_switched_off_uses_the_default_and_writes_nothing(tuner, monkeypatch):
    folder, calls = tuner
    monkeypatch.setenv(autotune.ENVIRONMENT, "0")
    layer = _layer()
    layer(_x())
    assert calls == [] and _files(folder) == []
    assert autotune.choose(layer, _x(), True) == "masked"  # 4 x 8 kernels
    large = PSConv2D(64, 3, padding="same")
    large.build((None, 9, 9, 64))
    assert autotune.choose(large, np.zeros((1, 9, 9, 64), "float32"), True) == "split"


def test_a_failed_write_leaves_no_file(tuner, monkeypatch):
    folder, _ = tuner

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(autotune.json, "dump", broken)
    with pytest.warns(UserWarning, match="Could not write"):
        _layer()(_x())
    assert _files(folder) == []


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function")
def test_traced_calls_never_measure_and_read_the_cache(tuner, monkeypatch):
    import tensorflow as tf

    folder, calls = tuner
    layer = _layer()
    layer.build((2, 9, 9, 8))
    tf.function(layer)(_x())
    assert calls == [] and _files(folder) == []
    autotune.tune(layer, _x(), training=True)  # measures eagerly, even if off
    assert calls == [(2, 9, 9, 8)]
    monkeypatch.setattr(autotune, "_memory", {})
    chosen = []
    real = autotune.choose
    monkeypatch.setattr(
        autotune, "choose", lambda *a: chosen.append(real(*a)) or chosen[-1]
    )
    tf.function(lambda x: layer(x, training=True))(_x())
    assert calls == [(2, 9, 9, 8)]
    record = json.loads((folder / _files(folder)[0]).read_text())
    assert chosen == [record["choice"]] and record["key"]["mode"] == "train"
