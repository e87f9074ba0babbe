"""PSConv2D and the PS zoo against their standard twins on one accelerator.

For a machine with one GPU (or TPU) and JAX but no TensorFlow; it installs
nothing and needs only keras, jax and this package:

    KERAS_BACKEND=jax python benchmarks/accelerator_speed.py --out results.json

Every function is compiled with `jax.jit`, warmed up, and timed in interleaved
rounds as the median time of one call (each round times `--repeat` calls back
to back, then waits for the device). It measures:
- layers: PSConv2D (pattern (1, 2, 1, 4)), `Conv2D` and `Conv2D(dilation_rate=2)`
  at the 3x3 convolutions of ResNet-50 and at small layers, forward and
  forward+backward (loss sum(y^2), so the upstream gradient depends on the
  data), in float32 and under the `mixed_bfloat16` policy;
- the paper's speed setting, (N, C, H, W) = (200, 64, 56, 56) in inference:
  PSConv2D / dilated and dilated / standard (the paper: 1.14x and 2.99x on a
  Titan X);
- the SGD train step of ps_resnet50 and resnet50 at 224x224.
Before timing, PSConv2D's output is checked against the same function written
as masked dense convolutions at full precision. Results go to one JSON file;
the tables are printed as markdown.
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import psconv_tf  # noqa: E402
from psconv_tf import PSConv2D  # noqa: E402
from psconv_tf import models  # noqa: E402
from psconv_tf import ps_conv2d  # noqa: E402

# (channels, spatial size): the 3x3 convolutions of ResNet-50, then small ones.
RESNET50_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))
SMALL_SHAPES = ((16, 28), (32, 14), (64, 7))
PAPER_SETTING = (200, 64, 56)  # N, C, H = W
POLICIES = ("float32", "mixed_bfloat16")
IMPLEMENTATIONS = tuple(i for i in ps_conv2d.IMPLEMENTATIONS if i != "auto")


def _layers(channels, policy):
    """Conv2D, dilated Conv2D and PSConv2D with each implementation."""
    common = dict(padding="same", use_bias=False, dtype=policy)
    layers = {
        "conv2d": keras.layers.Conv2D(channels, 3, **common),
        "dilated": keras.layers.Conv2D(channels, 3, dilation_rate=2, **common),
    }
    for name in IMPLEMENTATIONS:
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
    """Median seconds per call of each (function, args), interleaved."""
    for function, args in functions.values():
        jax.block_until_ready(function(*args))  # compile and warm up
        jax.block_until_ready(function(*args))
    times = {key: [] for key in functions}
    for _ in range(rounds):
        for key, (function, args) in functions.items():
            start = time.perf_counter()
            for _ in range(repeat):
                result = function(*args)
            jax.block_until_ready(result)
            times[key].append((time.perf_counter() - start) / repeat)
    return {key: float(np.median(value)) for key, value in times.items()}


def check_exact(channels=64, size=28, batch=4):
    """{implementation: max|PSConv2D - masked dense convs| / max|reference|}
    at full precision, the reference written here with `lax` directly."""
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, channels))
    errors = {}
    for implementation in IMPLEMENTATIONS:
        layer = PSConv2D(channels, 3, padding="same", use_bias=False,
                         implementation=implementation)
        with jax.default_matmul_precision("highest"):
            y = np.asarray(layer(x))
            kernel = jnp.asarray(layer.dense_kernel())
            matrix = layer.dilation_matrix()
            reference = 0
            for rate in np.unique(matrix[matrix > 0]):
                mask = jnp.asarray((matrix == rate).T[None, None].astype("float32"))
                reference = reference + jax.lax.conv_general_dilated(
                    x, kernel * mask, (1, 1), "SAME", rhs_dilation=(int(rate),) * 2,
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
        reference = np.asarray(reference)
        errors[implementation] = float(np.abs(y - reference).max() / np.abs(reference).max())
    return errors


def layer_rows(shapes, policies, modes, rounds, repeat):
    """Times every (N, C, H) shape; prints and returns one row per mode."""
    rows = []
    for policy in policies:
        for n, channels, size in shapes:
            x = jax.random.normal(jax.random.PRNGKey(1), (n, size, size, channels))
            x = x.astype("bfloat16" if policy == "mixed_bfloat16" else "float32")
            functions = {}
            layers = _layers(channels, policy)
            for name, layer in layers.items():
                for mode, entry in _functions(layer, x).items():
                    if mode in modes:
                        functions[(name, mode)] = entry
            times = _time(functions, rounds, repeat)
            for mode in modes:
                row = dict(
                    policy=policy, shape=[n, channels, size, size], mode=mode,
                    ms={name: times[(name, mode)] * 1e3 for name in layers},
                )
                rows.append(row)
                _print_layer_row(row)
    return rows


LAYER_HEADER = (
    "| policy | shape (N, C, H, W) | mode | Conv2D ms | dilated d=2 | "
    + " | ".join(IMPLEMENTATIONS) + " | best PSConv2D / dilated |\n|"
    + "---|" * (len(IMPLEMENTATIONS) + 6)
)


def _print_layer_row(row):
    ms = row["ms"]
    base = ms["conv2d"]
    best = min(ms[name] for name in IMPLEMENTATIONS)
    print(
        f"| {row['policy']} | {tuple(row['shape'])} | {row['mode']} | {base:.3f} | "
        f"{ms['dilated'] / base:.2f}x | "
        + " | ".join(f"{ms[name] / base:.2f}x" for name in IMPLEMENTATIONS)
        + f" | {best / ms['dilated']:.2f}x |",
        flush=True,
    )


def _train_step(model, batch, size, policy):
    """A jitted SGD step of `model` on a fixed batch, and its state."""
    images = jax.random.normal(jax.random.PRNGKey(2), (batch, size, size, 3))
    labels = jax.random.randint(jax.random.PRNGKey(3), (batch,), 0, 1000)
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
        (value, non_trainable), grads = jax.value_and_grad(loss, has_aux=True)(
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


def train_rows(names, batch, size, policies, rounds):
    rows = []
    for policy in policies:
        keras.config.set_dtype_policy(policy)
        steps = {}
        for name in names:
            model = models.get(name, input_shape=(size, size, 3))
            steps[name] = _train_step(model, batch, size, policy)
        keras.config.set_dtype_policy("float32")
        times = {}
        for name, (step, state) in steps.items():
            compile_start = time.perf_counter()
            state = jax.block_until_ready(step(state))
            compile_s = time.perf_counter() - compile_start
            steps[name] = (step, jax.block_until_ready(step(state)))
            times[name] = ([], compile_s)
        for _ in range(rounds):
            for name, (step, state) in steps.items():
                start = time.perf_counter()
                state = jax.block_until_ready(step(state))
                times[name][0].append(time.perf_counter() - start)
                steps[name] = (step, state)
        standard, ps = names
        row = dict(
            policy=policy, batch=batch, size=size,
            images_per_s={n: batch / float(np.median(t)) for n, (t, _) in times.items()},
            compile_s={n: c for n, (_, c) in times.items()},
        )
        rows.append(row)
        ips = row["images_per_s"]
        print(
            f"| {policy} | {standard} | {ips[standard]:.0f} | {ips[ps]:.0f} | "
            f"{ips[ps] / ips[standard]:.2f}x |",
            flush=True,
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="accelerator_speed.json")
    parser.add_argument("--batch", type=int, default=32,
                        help="N of the layer shapes (the paper's setting uses 200)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=20,
                        help="calls per timed round of a layer")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=224)
    parser.add_argument("--train-rounds", type=int, default=10)
    parser.add_argument("--train-policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()

    device = jax.devices()[0]
    results = dict(
        device=getattr(device, "device_kind", str(device)),
        platform=device.platform,
        jax=jax.__version__, keras=keras.__version__,
        psconv_tf=psconv_tf.__version__, python=platform.python_version(),
        float32_matmul_precision=str(jax.config.jax_default_matmul_precision),
        rounds=args.rounds, repeat=args.repeat,
    )
    print(f"device: {results['device']} ({device.platform}), jax {jax.__version__}, "
          f"keras {keras.__version__}; medians of {args.rounds} interleaved rounds")
    results["exactness"] = check_exact()
    print("PSConv2D vs masked dense convs, max|a-b|/max|b|: " + ", ".join(
        f"{name} {error:.1e}" for name, error in results["exactness"].items()))

    def save():
        temporary = args.out + ".tmp"
        with open(temporary, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(temporary, args.out)

    print("\nPSConv2D (each implementation) and dilated Conv2D relative to "
          "Conv2D\n" + LAYER_HEADER)
    modes = ("forward", "forward+backward")
    results["layers"] = layer_rows(
        [(args.batch, c, s) for c, s in RESNET50_SHAPES + SMALL_SHAPES],
        ("float32",), modes, args.rounds, args.repeat,
    ) + layer_rows(
        [(args.batch, c, s) for c, s in RESNET50_SHAPES],
        ("mixed_bfloat16",), modes, args.rounds, args.repeat,
    )
    save()
    print("\nThe paper's speed setting, inference\n" + LAYER_HEADER)
    results["paper_setting"] = layer_rows(
        (PAPER_SETTING,), POLICIES, ("forward",),
        args.rounds, max(1, args.repeat // 4),
    )
    save()
    if not args.skip_train:
        print(f"\nTrain step (SGD), batch {args.train_batch} at {args.train_size}², "
              "PSConv2D implementation: the default where nothing is measured\n"
              "| policy | model | standard images/s | PS images/s | PS / standard |\n"
              "|---|---|---|---|---|")
        results["train_step"] = train_rows(
            ("resnet50", "ps_resnet50"), args.train_batch, args.train_size,
            args.train_policies, args.train_rounds,
        )
        save()
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
