"""The docstring examples of the modules that hold them run and print what
they show; every Python block of the README runs as written; the README stays
a front door: short, and free of measurement tables, which the benchmarks
write into docs/benchmarks.md."""

import ast
import doctest
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import psconv_tf
import psconv_tf.models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "tests", "readme_runner.py")
# Subpackages that need TensorFlow (the others run on every Keras backend).
TENSORFLOW_PACKAGES = ("psconv_tf.training", "psconv_tf.classification", "psconv_tf.export",
                       "psconv_tf.runtime.run_config", "psconv_tf.runtime.strategy")
# The modules whose docstrings hold examples: each must hold at least one,
# and every module that holds one must be listed.
DOCTEST_MODULES = (
    "psconv_tf.layers.dynamic_ps_conv2d",
    "psconv_tf.export.calibration",
    "psconv_tf.export.exporter",
    "psconv_tf.export.serving",
    "psconv_tf.export.sources",
    "psconv_tf.runtime.files",
    "psconv_tf.hub",
    "psconv_tf.models",
    "psconv_tf.layers.ps_conv2d",
    "psconv_tf.rate_share",
    "psconv_tf.training",
    "psconv_tf.training.cli",
    "psconv_tf.training.configs",
    "psconv_tf.runtime.errors",
    "psconv_tf.classification.image_data",
    "psconv_tf.training.optimizer",
    "psconv_tf.runtime.run_config",
    "psconv_tf.runtime.images",
    "psconv_tf.runtime.recipe",
    "psconv_tf.runtime.statistics",
    "psconv_tf.runtime.run_lock",
    "psconv_tf.training.run_log",
    "psconv_tf.training.schedules",
    "psconv_tf.training.stopping",
    "psconv_tf.runtime.strategy",
)


def _package_modules():
    """{module name: source path} of psconv_tf and psconv_tf.models."""
    modules = {}
    for package in (psconv_tf, psconv_tf.models):
        modules[package.__name__] = package.__file__
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            spec = info.module_finder.find_spec(info.name)
            modules[info.name] = spec.origin
    return modules


def example_count(path):
    """How many `>>>` examples the docstrings of the module at `path` hold
    (read from the source, without importing it), nested functions included,
    those marked `doctest: +SKIP` left out."""
    with open(path) as file:
        tree = ast.parse(file.read())
    nodes = [tree] + [node for node in ast.walk(tree) if isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return sum(len(re.findall(r"^\s*>>> (?!.*doctest: *\+SKIP).*$",
                              ast.get_docstring(node) or "", re.MULTILINE))
               for node in nodes)


def test_doctest_modules_are_exactly_those_with_examples():
    with_examples = {name for name, path in _package_modules().items()
                     if example_count(path)}
    assert sorted(with_examples) == sorted(DOCTEST_MODULES)


def run_doctests(module):
    """Runs a module's docstring examples (a module or its name); fails if it
    has none, if doctest skips one the source holds (one in a nested
    function, say), or if one fails."""
    if isinstance(module, str):
        module = importlib.import_module(module)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    if result.attempted == 0:
        pytest.fail(f"{module.__name__} is listed for doctests but holds no example.")
    in_source = example_count(module.__file__)
    if result.attempted != in_source:
        pytest.fail(f"{module.__name__}: doctest ran {result.attempted} of the "
                    f"{in_source} examples its docstrings hold.")
    assert result.failed == 0


@pytest.mark.parametrize("module_name", [
    pytest.param(name, marks=pytest.mark.tensorflow)
    if name.startswith(TENSORFLOW_PACKAGES) else name
    for name in DOCTEST_MODULES
])
def test_docstring_examples(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    run_doctests(module_name)


def test_a_listed_module_without_examples_fails():
    assert example_count(importlib.import_module("psconv_tf.export.errors").__file__) == 0
    with pytest.raises(pytest.fail.Exception, match="holds no example"):
        run_doctests("psconv_tf.export.errors")


def _module_from_source(directory, name, source):
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_doctest_cannot_reach_fail(tmp_path):
    """An example only in a nested function is never run by doctest: it
    counts as missing, as does a module whose every example is such."""
    nested = (
        'def outer():\n'
        '    def inner():\n'
        '        """\n        >>> 1 + 1\n        3\n        """\n'
        '    return inner\n'
    )
    with pytest.raises(pytest.fail.Exception, match="holds no example"):
        run_doctests(_module_from_source(tmp_path, "only_nested", nested))
    reached = '"""\n>>> 2 * 2\n4\n"""\n'
    with pytest.raises(pytest.fail.Exception, match="ran 1 of the 2 examples"):
        run_doctests(_module_from_source(tmp_path, "partly_nested", reached + nested))
    run_doctests(_module_from_source(tmp_path, "reached", reached))


# The README ----------------------------------------------------------------


def _readme():
    with open(os.path.join(ROOT, "README.md")) as file:
        return file.read()


def readme_blocks():
    """[(name, code)] of the README's ```python blocks, named by section."""
    blocks, section, counts = [], "top", {}
    for heading, code in re.findall(r"^(#{2,4} [^\n]*)$|^```python\n(.*?)^```",
                                    _readme(), re.MULTILINE | re.DOTALL):
        if heading:
            section = heading.lstrip("#").strip()
            continue
        counts[section] = counts.get(section, 0) + 1
        blocks.append((f"{section} #{counts[section]}", code))
    return blocks


# What a block must also have done, checked in its namespace.
CHECKS = {
    "PSConv for any Keras model #1": (
        "from psconv_tf import PSConv2D\n"
        "chosen = [l for l in ps_model.layers if isinstance(l, PSConv2D)]\n"
        "assert chosen and all(l.name.startswith('conv4_') and l.kernel_size == (3, 3)\n"
        "                      for l in chosen)\n"
    ),
    "Training #1": "assert metrics['steps_done'] == 4 and 'top1' in metrics['final']\n",
    "Export and deployment #1": "assert logits.shape == (1, 10)\n",
}


def _write_readme_files(directory):
    """The files the README's blocks read, as the project's commands write
    them: an official-style PS-ResNet-50 checkpoint (random weights,
    nonzero masked weights as in the released ones) and the run folders of
    `training/quick_run.py` (untrained)."""
    import keras
    import torch
    import torch_official

    from psconv_tf.classification import runs
    from psconv_tf.training import configs
    from psconv_tf.runtime import run_config
    from psconv_tf.runtime.run_config import Preprocessing
    from psconv_tf.runtime.run_config import RunConfig

    torch.manual_seed(0)
    state = torch_official.ResNet((3, 4, 6, 3)).state_dict()
    torch.save({"state_dict": {"module." + key: value for key, value in state.items()}},
               os.path.join(directory, "ps_resnet50.pth"))
    for model in ("ps_cifar_resnet20", "dps_cifar_resnet20"):
        run_dir = os.path.join(directory, "runs", "quick_run", model)
        config = RunConfig(model=model, num_classes=10, image_size=28, channels=1,
                           recipe=configs.QUICK, dataset="fashion_mnist",
                           preprocessing=Preprocessing(mean=[72.9], std=[90.0]))
        os.makedirs(run_dir)
        run_config.write_config(run_dir, config)
        keras.utils.set_random_seed(0)
        runs.build_model(config).save(run_config.RunFolder(run_dir).best_model)


@pytest.fixture(scope="module")
def readme_results(tmp_path_factory):
    """{block name: {"seconds", "error"}}: every README block, run in one
    process in a folder that holds the files they read."""
    directory = str(tmp_path_factory.mktemp("readme"))
    _write_readme_files(directory)
    blocks = [{"name": name, "code": code, "check": CHECKS.get(name)}
              for name, code in readme_blocks()]
    with open(os.path.join(directory, "blocks.json"), "w") as file:
        json.dump(blocks, file)
    results_path = os.path.join(directory, "results.json")
    process = subprocess.run(
        [sys.executable, RUNNER, "blocks.json", results_path], cwd=directory,
        env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                 MPLBACKEND="Agg"),
        capture_output=True, text=True, timeout=600,
    )
    print(process.stdout)
    results = {}
    if os.path.isfile(results_path):
        with open(results_path) as file:
            results = json.load(file)
    return results, process.stderr[-3000:]


def test_readme_checks_name_existing_blocks():
    names = [name for name, _ in readme_blocks()]
    assert len(names) == len(set(names))
    assert set(CHECKS) <= set(names)


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", [name for name, _ in readme_blocks()])
def test_readme_block_runs(readme_results, name):
    results, stderr = readme_results
    assert name in results, f"the block did not run; the process printed:\n{stderr}"
    assert results[name]["error"] is None, results[name]["error"]


def test_quick_run_time_is_the_same_in_readme_and_help():
    with open(os.path.join(ROOT, "training", "quick_run.py")) as file:
        help_time = re.search(r"takes about (\w+ minutes)", file.read())
    readme_time = re.search(r"Offline, about (\w+ minutes)", _readme())
    assert help_time and readme_time
    assert readme_time.group(1) == help_time.group(1)


def test_readme_is_a_front_door():
    """At most 350 lines, one table of results (the quick run's), and every
    docs/ page it links to exists."""
    readme = _readme()
    assert len(readme.splitlines()) <= 350
    headers = re.findall(r"^\|[^\n]*\|\n\|(?:---\|)+$", readme, re.MULTILINE)
    assert len(headers) <= 2  # the quick run's results and the zoo's families
    for link in set(re.findall(r"\]\((docs/[^)#]+)", readme)):
        assert os.path.isfile(os.path.join(ROOT, link)), link
