"""The docstring examples of every module run and print what they show; the
README's examples run, and the benchmarks print the README's tables."""

import doctest
import importlib
import os
import pkgutil
import re

import pytest

import psconv_tf
import psconv_tf.models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subpackages that need TensorFlow (the others run on every Keras backend).
TENSORFLOW_PACKAGES = ("psconv_tf.training", "psconv_tf.export")


def _modules():
    names = ["psconv_tf", "psconv_tf.models"]
    for package in (psconv_tf, psconv_tf.models):
        names += [name for _, name, _ in pkgutil.walk_packages(package.__path__,
                                                               package.__name__ + ".")]
    return [pytest.param(name, marks=pytest.mark.tensorflow)
            if name.startswith(TENSORFLOW_PACKAGES) else name
            for name in sorted(set(names)) if not name.endswith("__main__")]


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name, tmp_path, monkeypatch):
    module = importlib.import_module(module_name)
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def _readme():
    with open(os.path.join(ROOT, "README.md")) as file:
        return file.read()


def _python_blocks(section):
    """The ```python blocks of a README section (from its heading to the next)."""
    text = _readme()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


@pytest.mark.tensorflow
def test_readme_convert_example_runs_and_picks_3x3_convs():
    (block,) = _python_blocks("PSConv for any Keras model")
    namespace = {}
    exec(block, namespace)
    chosen = [layer for layer in namespace["ps_model"].layers
              if isinstance(layer, psconv_tf.PSConv2D)]
    assert chosen and all(layer.name.startswith("conv4_") and layer.kernel_size == (3, 3)
                          for layer in chosen)


@pytest.mark.parametrize("script", ["training_speed", "tflite_latency"])
def test_benchmarks_print_the_readme_tables(script):
    """The table headers a benchmark prints are the README's, line for line."""
    path = os.path.join(ROOT, "benchmarks", f"{script}.py")
    spec = importlib.util.spec_from_file_location(f"benchmark_{script}", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    readme = _readme()
    for table in benchmark.TABLES:
        assert f"\n{table}\n" in readme, table
    assert f"python benchmarks/{script}.py" in readme
