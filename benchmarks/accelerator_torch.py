"""PSConv's PyTorch peers on one device, for `accelerator_speed.py`.

Run by `accelerator_speed.py` in a process of its own (Keras' backend is
fixed per process); it can run alone too:

    python -m benchmarks.accelerator_torch --cases cases.json --out torch.json \
        [--official-module path/to/psconv.py]

It times, on the GPU when PyTorch sees one (else the CPU), eager PyTorch:
- Keras on the PyTorch backend: `Conv2D`, `Conv2D(dilation_rate=2)` and
  PSConv2D with each implementation that runs on every backend, channels
  first (PyTorch's native layout, for every layer alike);
- with `--official-module`, the authors' `PSConv2d` / `PSGConv2d` (their file,
  unchanged: the layer as their ResNets build it, dilation 2, padding 1,
  parts 4) against `nn.Conv2d` and `nn.Conv2d(dilation=2)` with the same
  groups. Their file targets PyTorch 1.x; while a layer is built, two calls
  are bridged: `Tensor.byte()` gives a bool tensor (PyTorch 2 indexes with
  bool masks only) and, without a GPU, `Tensor.cuda()` leaves the tensor
  where it is.
Forward passes run under `torch.no_grad()`; forward+backward differentiates
sum(y^2) with respect to the input and the weights. `cudnn.benchmark` is on.
Each case is a dict: policy ("float32" or "mixed_bfloat16"; the authors' layer
and nn.Conv2d then run in bfloat16), shape [N, C, H, W], groups, modes.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from psconv_tf import PSConv2D  # noqa: E402
from psconv_tf.engine import executor  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PS_IMPLEMENTATIONS = executor.IMPLEMENTATIONS


def device_name():
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else f"cpu ({os.cpu_count()} cores)"


def _synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _runs(layer, x, parameters, modes):
    """{mode: fn} of one layer (a Keras layer or an nn.Module)."""
    runs = {}
    if "forward" in modes:
        def forward():
            with torch.no_grad():
                return layer(x)
        runs["forward"] = forward
    if "forward+backward" in modes:
        def forward_backward():
            inputs = x.detach().requires_grad_(True)
            for weight in parameters:
                weight.grad = None
            y = layer(inputs)
            (y.float() ** 2).sum().backward()
        runs["forward+backward"] = forward_backward
    return runs


def median_ms(runs, rounds, repeat):
    """Median milliseconds per call of each of `runs`, in interleaved rounds."""
    for run in runs.values():
        run()
        run()
    _synchronize()
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            for _ in range(repeat):
                run()
            _synchronize()
            times[key].append((time.perf_counter() - start) / repeat * 1e3)
    return {key: float(np.median(value)) for key, value in times.items()}


def _rows(case, layers, x, parameters, framework, policy, rounds, repeat):
    runs = {}
    for name, layer in layers.items():
        for mode, run in _runs(layer, x, parameters[name], case["modes"]).items():
            runs[(name, mode)] = run
    ms = median_ms(runs, rounds, repeat)
    return [
        dict(framework=framework, policy=policy, shape=list(case["shape"]),
             groups=case["groups"], mode=mode,
             ms={name: ms[(name, mode)] for name in layers})
        for mode in case["modes"]
    ]


def keras_rows(case, rounds, repeat):
    """Keras on the PyTorch backend: Conv2D, dilated and PSConv2D."""
    n, channels, size, _ = case["shape"]
    groups = case["groups"]
    keras.config.set_dtype_policy(case["policy"])
    try:
        common = dict(padding="same", use_bias=False, data_format="channels_first",
                      groups=groups)
        layers = {
            "standard": keras.layers.Conv2D(channels, 3, **common),
            "dilated": keras.layers.Conv2D(channels, 3, dilation_rate=2, **common),
        }
        for name in PS_IMPLEMENTATIONS:
            layers[name] = PSConv2D(channels, 3, implementation=name, **common)
        shape = (n, channels, size, size)
        for layer in layers.values():
            layer.build(shape)
    finally:
        keras.config.set_dtype_policy("float32")
    x = torch.randn(shape, device=DEVICE)
    parameters = {name: [v.value for v in layer.trainable_variables]
                  for name, layer in layers.items()}
    return _rows(case, layers, x, parameters, "torch (keras)", case["policy"], rounds, repeat)


@contextlib.contextmanager
def _official_compat():
    """See the module docstring: PyTorch 1.x calls of the authors' file."""
    byte, cuda = torch.Tensor.byte, torch.Tensor.cuda
    torch.Tensor.byte = lambda self, *args, **kwargs: self.bool()
    if DEVICE != "cuda":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.byte, torch.Tensor.cuda = byte, cuda


def load_official(path):
    """The authors' module at `path` (their psconv.py), imported by path."""
    if not os.path.isfile(path):
        raise ValueError(f"no file at {path!r}")
    spec = importlib.util.spec_from_file_location("psconv_official", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [name for name in ("PSConv2d", "PSGConv2d") if not hasattr(module, name)]
    if missing:
        raise ValueError(f"{path!r} defines no {' or '.join(missing)}")
    return module


def official_rows(module, case, rounds, repeat):
    """The authors' layer against nn.Conv2d and dilated nn.Conv2d."""
    n, channels, size, _ = case["shape"]
    groups = case["groups"]
    dtype = torch.bfloat16 if case["policy"] == "mixed_bfloat16" else torch.float32
    with _official_compat():
        if groups == 1:
            official = module.PSConv2d(channels, channels, 3, 1, 1, 2, parts=4)
        else:
            official = module.PSGConv2d(channels, channels, 3, 1, 1, 2, groups=groups, parts=4)
    layers = {
        "standard": torch.nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=False),
        "dilated": torch.nn.Conv2d(channels, channels, 3, 1, 2, 2, groups=groups, bias=False),
        "official": official,
    }
    for layer in layers.values():
        layer.to(DEVICE, dtype)
    x = torch.randn((n, channels, size, size), device=DEVICE, dtype=dtype)
    parameters = {name: list(layer.parameters()) for name, layer in layers.items()}
    policy = "bfloat16" if dtype == torch.bfloat16 else "float32"
    return _rows(case, layers, x, parameters, "torch", policy, rounds, repeat)


def run(cases, module, rounds, repeat):
    """{"device", "torch", "keras", "rows"}: every case on Keras' PyTorch
    backend and, given the authors' `module` (or None), their layer."""
    torch.backends.cudnn.benchmark = True
    rows = []
    for case in cases:
        rows += keras_rows(case, rounds, repeat)
        if module is not None:
            rows += official_rows(module, case, rounds, repeat)
    return dict(device=device_name(), torch=torch.__version__, keras=keras.__version__,
                rows=rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True, help="JSON file of the cases")
    parser.add_argument("--out", required=True)
    parser.add_argument("--official-module", default=None,
                        help="the authors' psconv.py (PSConv2d, PSGConv2d)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with open(args.cases) as file:
        cases = json.load(file)
    module = None
    if args.official_module:
        try:
            module = load_official(args.official_module)
        except (ValueError, ImportError, SyntaxError) as error:
            parser.error(f"--official-module: {error}")
    results = run(cases, module, args.rounds, args.repeat)
    temporary = args.out + ".tmp"
    with open(temporary, "w") as file:
        json.dump(results, file, indent=1)
    os.replace(temporary, args.out)


if __name__ == "__main__":
    main()
