"""PSConv2D, its peers and the PS zoo against their standard twins on one GPU.

For a machine with one GPU, JAX and PyTorch but no TensorFlow:

    KERAS_BACKEND=jax python -m benchmarks.accelerator_speed --out results.json \
        [--official-module path/to/psconv.py]

It installs nothing: keras, jax, torch and this package must be installed
(`pip install --no-deps --no-build-isolation .` where the package index is
out of reach; keras needs its wheels, with namex and optree, where it is
missing). `--official-module` is the authors' file (d-li14/PSConv,
mmdet/models/utils/psconv.py), fetched by the user and loaded unchanged
(see `accelerator_torch.py`). Every ratio compares medians measured in the
same run, on the same device, against the standard layer of the same
framework; backward passes differentiate sum(y^2).

One table, one row per (framework, policy, shape, groups, mode), sections
chosen with `--sections`:
- "torch" (run first, in a process of its own, before JAX takes the GPU):
  "torch (keras)", the layers below on Keras' PyTorch backend (eager), and,
  with `--official-module`, "torch": the authors' PSConv2d / PSGConv2d
  against `nn.Conv2d` and `nn.Conv2d(dilation=2)`, same shapes and groups;
- "layers": "jax", Keras on JAX, each function under `jax.jit`, timed in
  interleaved rounds (each times `--repeat` calls back to back, then waits
  for the device): `Conv2D`, `Conv2D(dilation_rate=2)` and PSConv2D (pattern
  (1, 2, 1, 4)) with each of `--implementations` ("fused": the Pallas
  kernels), at the 3x3 convolutions of ResNet-50 and at small layers (N =
  `--batch`), float32 and `mixed_bfloat16`; ResNeXt-50's grouped layer
  128@28² with 32 groups; the paper's speed setting (N, C, H, W) = (200, 64,
  56, 56) in inference (the paper: PSConv / dilated 1.14x, dilated /
  standard 2.99x on a Titan X). First, every implementation is checked
  against masked grouped convolutions written with `lax`, at full
  precision: values, input and kernel gradients, at stride 1 (fused: tile
  products as dots) and at stride 2 with 32 groups (multiply-adds);
- "train": the SGD train step of ps_resnet50 against resnet50 (`--train-
  models resnext50_32x4d` adds ResNeXt-50) at 224², PSConv2D at its default
  where nothing is measured ("default") and with each other
  `--train-implementations` ("fused").
Results go to one JSON file, written after every section; the tables are
printed as markdown. A kernel that fails to compile is reported ("error" in
the table, its message in the JSON) and the run goes on. `--smoke` runs
every section at tiny sizes: a check of the script on a CPU, where "fused"
runs in Pallas interpret mode and no time means anything.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import psconv_tf  # noqa: E402
from psconv_tf import PSConv2D  # noqa: E402
from psconv_tf import models  # noqa: E402
from psconv_tf.layers import ps_conv2d  # noqa: E402

# (channels, spatial size): the 3x3 convolutions of ResNet-50, then small ones.
RESNET50_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))
SMALL_SHAPES = ((16, 28), (32, 14), (64, 7))
GROUPED = (128, 28, 32)  # channels, size, groups: ResNeXt-50 32x4d's first stage
PAPER_SETTING = (200, 64, 56)  # N, C, H = W
POLICIES = ("float32", "mixed_bfloat16")
MODES = ("forward", "forward+backward")
IMPLEMENTATIONS = tuple(i for i in ps_conv2d.IMPLEMENTATIONS if i != "auto")
PS_COLUMNS = IMPLEMENTATIONS + ("official",)
TRAIN_PAIRS = (("resnet50", "ps_resnet50"), ("resnext50_32x4d", "ps_resnext50_32x4d"))
SECTIONS = ("torch", "layers", "train")
SMOKE = dict(shapes=((16, 8),), grouped=(128, 8, 32), paper=(2, 16, 6), batch=2,
             exact=((16, 8, 1, 1), (128, 7, 32, 2)),
             train_pairs=(("cifar_resnet20", "ps_cifar_resnet20"),), train_size=16)


def layer_case(policy, n, channels, size, groups=1, modes=MODES):
    return dict(policy=policy, shape=[n, channels, size, size], groups=groups,
                modes=list(modes))


def _layers(channels, groups, policy, implementations):
    """Conv2D, dilated Conv2D and PSConv2D with each of `implementations`."""
    common = dict(padding="same", use_bias=False, dtype=policy, groups=groups)
    layers = {
        "standard": keras.layers.Conv2D(channels, 3, **common),
        "dilated": keras.layers.Conv2D(channels, 3, dilation_rate=2, **common),
    }
    for name in implementations:
        layers[name] = PSConv2D(channels, 3, implementation=name, **common)
    return layers


def _functions(layer, x):
    """Jitted forward and forward+backward of `layer`, with their arguments."""
    layer.build(x.shape)
    weights = [v.value for v in layer.trainable_variables]

    def forward(weights, x):
        y, _ = layer.stateless_call(weights, [], x)
        return y

    def loss(weights, x):
        y = forward(weights, x).astype("float32")
        return jnp.sum(y * y)

    return {
        "forward": (jax.jit(forward), (weights, x)),
        "forward+backward": (jax.jit(jax.grad(loss, argnums=(0, 1))), (weights, x)),
    }


def _time(functions, rounds, repeat):
    """Median milliseconds per call of each (function, args), interleaved,
    and {key: error} of those that failed to compile or run."""
    errors = {}
    for key, (function, args) in list(functions.items()):
        try:
            jax.block_until_ready(function(*args))  # compile and warm up
            jax.block_until_ready(function(*args))
        except Exception as error:  # noqa: BLE001 - reported in the table and JSON
            errors[key] = f"{type(error).__name__}: {error}"[:500]
            del functions[key]
    times = {key: [] for key in functions}
    for _ in range(rounds):
        for key, (function, args) in functions.items():
            start = time.perf_counter()
            for _ in range(repeat):
                result = function(*args)
            jax.block_until_ready(result)
            times[key].append((time.perf_counter() - start) / repeat * 1e3)
    return {key: float(np.median(value)) for key, value in times.items()}, errors


# (channels, size, groups, stride) of the exactness checks: tile products as
# dots at stride 1, and as multiply-adds over groups at stride 2.
EXACT_CONFIGS = ((64, 28, 1, 1), (128, 14, 32, 2))


def _masked_reference(x, kernel, matrix, groups, stride):
    """Eq. 3 as masked grouped convolutions at each rate, written with `lax`
    ("same": TensorFlow's rule for each rate)."""
    filters, per_group = kernel.shape[3], kernel.shape[2]
    block = filters // groups
    rates = np.stack([matrix[f, f // block * per_group:(f // block + 1) * per_group]
                      for f in range(filters)])  # (filters, channels / groups)
    y = 0
    for rate in np.unique(rates):
        mask = jnp.asarray((rates == rate).T[None, None], kernel.dtype)
        y = y + jax.lax.conv_general_dilated(
            x, kernel * mask, (stride, stride), "SAME", rhs_dilation=(int(rate),) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        )
    return y


def check_exact(implementations, batch=4, configs=EXACT_CONFIGS):
    """{"C@H, G=g, stride s": {implementation: worst max|a - b| / max|b| of
    values, input and kernel gradients}}, against `_masked_reference` at full
    precision, with a random cotangent."""
    errors = {}
    for channels, size, groups, stride in configs:
        x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, channels))
        label = f"{channels}@{size}, G={groups}, stride {stride}"
        errors[label] = {}
        for implementation in implementations:
            layer = PSConv2D(channels, 3, strides=stride, padding="same", groups=groups,
                             use_bias=False, implementation=implementation)
            layer.build(x.shape)
            matrix = layer.dilation_matrix()

            def ours(x, kernel, layer=layer):
                return layer.stateless_call([kernel], [], x)[0]

            def reference(x, kernel, matrix=matrix):
                return _masked_reference(x, kernel, matrix, groups, stride)

            kernel = layer.kernel.value
            with jax.default_matmul_precision("highest"):
                got, got_vjp = jax.vjp(jax.jit(ours), x, kernel)
                want, want_vjp = jax.vjp(jax.jit(reference), x, kernel)
                cotangent = jax.random.normal(jax.random.PRNGKey(1), want.shape)
                pairs = [(got, want)] + list(zip(got_vjp(cotangent), want_vjp(cotangent)))
            errors[label][implementation] = max(
                float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())
                for a, b in pairs
            )
    return errors


def jax_rows(cases, implementations, rounds, repeat):
    """Times every case under JAX; prints and returns one row per mode."""
    rows = []
    for spec in cases:
        n, channels, size, _ = spec["shape"]
        x = jax.random.normal(jax.random.PRNGKey(1), (n, size, size, channels))
        x = x.astype("bfloat16" if spec["policy"] == "mixed_bfloat16" else "float32")
        layers = _layers(channels, spec["groups"], spec["policy"], implementations)
        functions = {}
        for name, layer in layers.items():
            for mode, entry in _functions(layer, x).items():
                if mode in spec["modes"]:
                    functions[(name, mode)] = entry
        ms, errors = _time(functions, rounds, repeat)
        for mode in spec["modes"]:
            row = dict(framework="jax", policy=spec["policy"], shape=spec["shape"],
                       groups=spec["groups"], mode=mode,
                       ms={name: ms[(name, mode)] for name in layers if (name, mode) in ms},
                       errors={name: errors[(name, mode)] for name in layers
                               if (name, mode) in errors})
            rows.append(row)
            print_row(row)
    return rows


TABLE_HEADER = (
    "| framework | policy | shape (N, C, H, W) | groups | mode | standard ms | dilated | "
    + " | ".join(PS_COLUMNS) + " | best PS / dilated |\n|" + "---|" * (len(PS_COLUMNS) + 7)
)


def print_row(row):
    """One table row: times relative to the row's standard layer."""
    ms = row["ms"]
    base = ms["standard"]
    ps = [ms[name] for name in PS_COLUMNS if name in ms]
    errors = row.get("errors", {})
    cells = [f"{ms[name] / base:.2f}x" if name in ms else "error" if name in errors else "-"
             for name in PS_COLUMNS]
    print(
        f"| {row['framework']} | {row['policy']} | {tuple(row['shape'])} | {row['groups']} | "
        f"{row['mode']} | {base:.3f} | {ms['dilated'] / base:.2f}x | " + " | ".join(cells)
        + f" | {min(ps) / ms['dilated']:.2f}x |",
        flush=True,
    )


def torch_peers(cases, official_module, rounds, repeat):
    """Runs accelerator_torch.py on `cases` in a process of its own, with
    KERAS_BACKEND=torch. Returns its results, or {"error": text}."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "accelerator_torch.py")
    with tempfile.TemporaryDirectory() as folder:
        cases_path, out = os.path.join(folder, "cases.json"), os.path.join(folder, "out.json")
        with open(cases_path, "w") as file:
            json.dump(cases, file)
        command = [sys.executable, script, "--cases", cases_path, "--out", out,
                   "--rounds", str(rounds), "--repeat", str(repeat)]
        if official_module:
            command += ["--official-module", official_module]
        result = subprocess.run(command, env=dict(os.environ, KERAS_BACKEND="torch"),
                                capture_output=True, text=True)
        if result.returncode:
            return {"error": result.stderr.strip()[-2000:]}
        with open(out) as file:
            return json.load(file)


def _set_implementation(model, implementation):
    """Every PSConv2D of a zoo model (a functional model: all are in
    `model.layers`) runs `implementation`."""
    for layer in model.layers:
        if isinstance(layer, PSConv2D):
            layer.implementation = implementation


def _train_step(model, batch, size):
    """A jitted SGD step of `model` on a fixed batch, and its state."""
    images = jax.random.normal(jax.random.PRNGKey(2), (batch, size, size, 3))
    labels = jax.random.randint(jax.random.PRNGKey(3), (batch,), 0, 10)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss(trainable, non_trainable):
        logits, non_trainable = model.stateless_call(
            trainable, non_trainable, images, training=True
        )
        return loss_fn(labels, logits.astype("float32")), non_trainable

    @jax.jit
    def step(state):
        trainable, non_trainable, optimizer_vars = state
        (_, non_trainable), grads = jax.value_and_grad(loss, has_aux=True)(
            trainable, non_trainable
        )
        trainable, optimizer_vars = optimizer.stateless_apply(
            optimizer_vars, grads, trainable
        )
        return trainable, non_trainable, optimizer_vars

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    return step, state


TRAIN_HEADER = (
    "| policy | model | PSConv2D implementation | standard images/s | PS images/s | "
    "PS / standard |\n|---|---|---|---|---|---|"
)


def train_rows(pairs, implementations, batch, size, policies, rounds):
    """Images per second of each standard model and its PS twin (with each
    of `implementations`, "default" being the fixed default)."""
    rows = []
    for policy in policies:
        for standard, ps in pairs:
            keras.config.set_dtype_policy(policy)
            steps = {standard: _train_step(models.get(standard, input_shape=(size, size, 3)),
                                           batch, size)}
            for implementation in implementations:
                model = models.get(ps, input_shape=(size, size, 3))
                if implementation != "default":
                    _set_implementation(model, implementation)
                steps[implementation] = _train_step(model, batch, size)
            keras.config.set_dtype_policy("float32")
            times, compile_s = {}, {}
            for name, (step, state) in steps.items():
                start = time.perf_counter()
                state = jax.block_until_ready(step(state))
                compile_s[name] = time.perf_counter() - start
                steps[name] = (step, jax.block_until_ready(step(state)))
                times[name] = []
            for _ in range(rounds):
                for name, (step, state) in steps.items():
                    start = time.perf_counter()
                    state = jax.block_until_ready(step(state))
                    times[name].append(time.perf_counter() - start)
                    steps[name] = (step, state)
            ips = {name: batch / float(np.median(t)) for name, t in times.items()}
            for implementation in implementations:
                row = dict(policy=policy, model=ps, standard=standard, batch=batch, size=size,
                           implementation=implementation,
                           images_per_s={standard: ips[standard], ps: ips[implementation]},
                           compile_s={standard: compile_s[standard],
                                      ps: compile_s[implementation]})
                rows.append(row)
                print(f"| {policy} | {ps} | {implementation} | {ips[standard]:.0f} | "
                      f"{ips[implementation]:.0f} | {ips[implementation] / ips[standard]:.2f}x |",
                      flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="accelerator_speed.json")
    parser.add_argument("--official-module", default=None,
                        help="the authors' psconv.py (PSConv2d, PSGConv2d), unchanged")
    parser.add_argument("--batch", type=int, default=32,
                        help="N of the layer shapes (the paper's setting uses 200)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=20,
                        help="calls per timed round of a layer")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=224)
    parser.add_argument("--train-rounds", type=int, default=10)
    parser.add_argument("--train-policies", nargs="+", default=list(POLICIES),
                        choices=POLICIES)
    parser.add_argument("--train-models", nargs="+", default=["resnet50"],
                        choices=[s for s, _ in TRAIN_PAIRS],
                        help="standard models whose PS twins train")
    parser.add_argument("--train-implementations", nargs="+", default=["default", "fused"],
                        choices=("default",) + IMPLEMENTATIONS)
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS),
                        choices=IMPLEMENTATIONS, help="PSConv2D implementations of the "
                        "JAX rows (Keras' PyTorch backend runs all but 'fused')")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                        help="torch: the PyTorch peers; layers: the JAX rows; "
                        "train: the train steps")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, 2 rounds: checks the script, e.g. on a CPU")
    args = parser.parse_args()
    if args.official_module and not os.path.isfile(args.official_module):
        parser.error(f"--official-module: no file at {args.official_module!r}")
    for name in ("batch", "rounds", "repeat", "train_batch", "train_size", "train_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    shapes, grouped, paper = RESNET50_SHAPES + SMALL_SHAPES, GROUPED, PAPER_SETTING
    bf16_shapes, batch = RESNET50_SHAPES, args.batch
    pairs = [p for p in TRAIN_PAIRS if p[0] in args.train_models]
    if args.smoke:
        shapes = bf16_shapes = SMOKE["shapes"]
        grouped, paper, batch = SMOKE["grouped"], SMOKE["paper"], SMOKE["batch"]
        args.rounds, args.repeat, args.train_rounds = 2, 1, 1
        args.train_batch, args.train_size = 2, SMOKE["train_size"]
        args.train_policies, args.train_implementations = ["float32"], ["default"]
        pairs = SMOKE["train_pairs"]
    channels, size, groups = grouped
    cases = (
        [layer_case("float32", batch, c, s) for c, s in shapes]
        + [layer_case("float32", batch, channels, size, groups)]
        + [layer_case("mixed_bfloat16", batch, c, s) for c, s in bf16_shapes]
        + [layer_case("mixed_bfloat16", batch, channels, size, groups)]
        + [layer_case(policy, *paper, modes=("forward",)) for policy in POLICIES]
    )
    if args.smoke:  # one case of each kind
        cases = [cases[0], dict(cases[1], modes=["forward"]),
                 dict(cases[2], modes=["forward"]), cases[-1]]
    results = dict(jax=jax.__version__, keras=keras.__version__,
                   psconv_tf=psconv_tf.__version__, python=platform.python_version(),
                   rounds=args.rounds, repeat=args.repeat, smoke=args.smoke, rows=[])

    def save():
        temporary = args.out + ".tmp"
        with open(temporary, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(temporary, args.out)

    torch_results = None
    if "torch" in args.sections:  # before JAX takes the device's memory
        torch_results = torch_peers(cases, args.official_module, args.rounds, args.repeat)
        results["torch"] = {k: v for k, v in torch_results.items() if k != "rows"}
        print(f"PyTorch peers: {results['torch'].get('device', 'failed')}, torch "
              f"{results['torch'].get('torch', '?')}")
    device = jax.devices()[0]
    results.update(device=getattr(device, "device_kind", str(device)), platform=device.platform,
                   float32_matmul_precision=str(jax.config.jax_default_matmul_precision))
    print(f"device: {results['device']} ({device.platform}), jax {jax.__version__}, "
          f"keras {keras.__version__}; medians of {args.rounds} interleaved rounds")
    if "layers" in args.sections:
        results["exactness"] = check_exact(
            args.implementations, *((2, SMOKE["exact"]) if args.smoke else ()))
        for label, errors in results["exactness"].items():
            print(f"PSConv2D vs masked convs, {label}, worst max|a-b|/max|b| of values and "
                  "gradients: " + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    print("\nStandard layer ms and every layer relative to it, per framework\n" + TABLE_HEADER)
    if torch_results is not None:
        if "error" in torch_results:
            lines = torch_results["error"].splitlines() or ["no message"]
            print(f"(PyTorch peers failed: {lines[-1]})")
        for row in torch_results.get("rows", []):
            results["rows"].append(row)
            print_row(row)
        save()
    if "layers" in args.sections:
        results["rows"] += jax_rows(cases, args.implementations, args.rounds, args.repeat)
        save()
    if "train" in args.sections:
        print(f"\nTrain step (SGD), batch {args.train_batch} at {args.train_size}²\n"
              + TRAIN_HEADER)
        results["train_step"] = train_rows(
            pairs, args.train_implementations, args.train_batch, args.train_size,
            args.train_policies, args.train_rounds,
        )
        save()
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
