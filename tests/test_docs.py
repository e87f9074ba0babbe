"""The docstring examples of the modules that hold them run and print what
they show; every Python block of the README runs as written; the benchmarks
print the README's tables."""

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


def _has_examples(path):
    """Whether a docstring of the module at `path` holds a `>>>` example
    (read from the source, without importing it)."""
    with open(path) as file:
        tree = ast.parse(file.read())
    nodes = [tree] + [node for node in ast.walk(tree) if isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return any(re.search(r"^\s*>>> ", ast.get_docstring(node) or "", re.MULTILINE)
               for node in nodes)


def test_doctest_modules_are_exactly_those_with_examples():
    with_examples = {name for name, path in _package_modules().items()
                     if _has_examples(path)}
    assert sorted(with_examples) == sorted(DOCTEST_MODULES)


def run_doctests(module_name):
    """Runs a module's docstring examples; fails if it has none or one fails."""
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    if result.attempted == 0:
        pytest.fail(f"{module_name} is listed for doctests but holds no example.")
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
    with pytest.raises(pytest.fail.Exception, match="holds no example"):
        run_doctests("psconv_tf.export.errors")


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
    "Training #2": "assert metrics['steps_done'] == 4 and 'top1' in metrics['final']\n",
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
