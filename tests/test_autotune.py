"""The implementation tuner: measuring, the on-disk cache, traced calls."""

import json
import os
import signal
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from psconv_tf import PSConv2D
from psconv_tf import tune
from psconv_tf.engine import autotune
from psconv_tf.engine import autotune_cache
from psconv_tf.engine.executor import IMPLEMENTATIONS


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
    tune(layer, _x(), training=True)  # measures eagerly, even if off
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


def _instant_measure(monkeypatch, calls):
    monkeypatch.setattr(
        autotune, "measure",
        lambda *args: calls.append(args[1]) or {"split": 2.0, "grouped": 3.0, "masked": 1.0},
    )


def _key_text():
    """The key of `_layer()` on `_x()` in inference."""
    layer = _layer()
    layer.build((2, 9, 9, 8))
    return json.dumps(autotune._key(layer, (2, 9, 9, 8), "float32", False), sort_keys=True)


class Blocked(Exception):
    """Raised in a test that blocked for 20 s (no OSError: nothing catches it)."""


@pytest.fixture
def alarm():
    """Fails a test that blocks for 20 s instead of hanging the suite."""

    def blocked(*args):
        raise Blocked("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _make_fifo(path, key):
    os.mkfifo(path)


def _make_nested(path, key):
    path.write_text("[" * 200_000 + "]" * 200_000)


def _make_large(path, key):  # a valid record, padded beyond the size limit
    record = json.dumps({"key": json.loads(key), "choice": "grouped"})
    path.write_text(record[:-1] + " " * autotune_cache.MAX_RECORD_BYTES + "}")


def _make_dev_zero(path, key):
    os.symlink("/dev/zero", path)


def _make_loop(path, key):
    os.symlink(path, path)


def _make_directory(path, key):
    path.mkdir()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX files")
@pytest.mark.parametrize(
    "make", [_make_fifo, _make_nested, _make_large, _make_dev_zero, _make_loop, _make_directory]
)
def test_what_is_not_a_small_regular_file_is_not_cached(tuner, monkeypatch, alarm, make):
    folder, calls = tuner
    _instant_measure(monkeypatch, calls)
    folder.mkdir()
    key = _key_text()
    make(folder / os.path.basename(autotune_cache.path_of(key)), key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = _layer()(_x())
    assert tuple(y.shape) == (2, 9, 9, 8) and calls == [(2, 9, 9, 8)]  # measured
    ignored = [w for w in caught if "Ignoring PSConv2D autotune cache" in str(w.message)]
    assert len(ignored) == 1, [str(w.message) for w in caught]


@pytest.mark.parametrize("obstacle", ["file", "loop"])
def test_a_cache_folder_that_cannot_be_made_warns_once_and_keeps_the_choice(
    tuner, monkeypatch, tmp_path, obstacle
):
    _, calls = tuner
    _instant_measure(monkeypatch, calls)
    folder = tmp_path / "blocked"
    if obstacle == "file":
        folder.write_text("a file where the cache folder should be")
    else:
        os.symlink(folder, folder)
    monkeypatch.setenv(autotune.CACHE_ENVIRONMENT, str(folder))
    layer = _layer()
    with pytest.warns(UserWarning, match="Could not write the PSConv2D autotune cache") as caught:
        layer(_x())
        layer(_x())  # the choice stays in memory: no second measurement
    assert calls == [(2, 9, 9, 8)] and len(caught) == 1
    assert autotune.choose(layer, _x(), False) == "masked"


def test_the_first_measurement_says_once_what_and_where(tuner, monkeypatch, capfd):
    folder, calls = tuner
    _instant_measure(monkeypatch, calls)
    monkeypatch.setattr(autotune, "_announced", [False])
    layer = _layer()
    layer(_x())
    layer(_x(batch=3))  # measured too, said no more
    _layer()(_x(batch=4))
    assert len(calls) == 3
    lines = [line for line in capfd.readouterr().err.splitlines() if "PSConv2D" in line]
    assert len(lines) == 1 and "timing its implementations" in lines[0]
    assert str(folder) in lines[0] and autotune.ENVIRONMENT in lines[0]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function")
def test_measuring_many_layers_retraces_nothing(tuner, monkeypatch):
    import logging

    from tensorflow.python.eager.polymorphic_function import polymorphic_function

    # A fresh detector: it warns a few times per function, then never again.
    monkeypatch.setattr(
        polymorphic_function, "_frequent_tracing_detector_manager",
        polymorphic_function._FrequentTracingDetectorManager(),
    )
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        for filters in (8, 16, 24, 32):
            PSConv2D(filters, 3, padding="same", groups=2)(_x())
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graphs")
@pytest.mark.parametrize("implementation", ["masked", "auto"])
def test_branch_free_graphs_hold_no_branch_and_compute_the_same(implementation):
    import tensorflow as tf

    layer = PSConv2D(8, 3, padding="same", groups=2, implementation=implementation)
    layer.build((2, 9, 9, 8))  # 4 x 8 kernels: "auto" defaults to "masked"

    def graph_ops():
        function = tf.function(lambda x: layer(x)).get_concrete_function(
            tf.TensorSpec((2, 9, 9, 8), "float32")
        )
        return {op.type for op in function.graph.get_operations()}, function(_x())

    branching, expected = graph_ops()
    with autotune.branch_free():
        ops_free, outputs = graph_ops()
    assert branching & {"If", "StatelessIf"} and not ops_free & {"If", "StatelessIf"}
    np.testing.assert_allclose(outputs.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
