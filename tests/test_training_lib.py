"""The training library: optimizer, schedules, strategies, precision, XLA, the loop."""

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

import training_helpers
from psconv_tf.training import configs
from psconv_tf.training import optimizer as optimizers
from psconv_tf.training import schedules
from psconv_tf.runtime import strategy as strategies
from psconv_tf.training import trainer as trainer_lib
from psconv_tf.runtime.errors import InputError

pytestmark = pytest.mark.tensorflow


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_coupled_weight_decay_matches_torch_sgd(nesterov):
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(3, 4))
    gradients = [rng.normal(size=(3, 4)) for _ in range(3)]
    learning_rate, momentum, decay = 0.1, 0.9, 0.05

    optimizer = optimizers.CoupledWeightDecaySGD(
        learning_rate, momentum=momentum, coupled_weight_decay=decay, nesterov=nesterov
    )
    variable = keras.Variable(initial.astype("float32"))
    optimizer.apply([tf.constant(gradients[0], tf.float32)], [variable])
    # One step by hand: w - lr * (g + wd * w), the momentum buffer starting at
    # 0; Nesterov's step looks ahead by momentum * (g + wd * w) more.
    expected = initial - learning_rate * (1 + momentum * nesterov) * (
        gradients[0] + decay * initial)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)

    for gradient in gradients[1:]:
        optimizer.apply([tf.constant(gradient, tf.float32)], [variable])
    weight = torch.tensor(initial, requires_grad=True)
    reference = torch.optim.SGD([weight], lr=learning_rate, momentum=momentum,
                                weight_decay=decay, nesterov=nesterov)
    for gradient in gradients:
        weight.grad = torch.tensor(gradient)
        reference.step()
    np.testing.assert_allclose(variable.numpy(), weight.detach().numpy(), rtol=1e-5)


def test_coupled_weight_decay_rejects_negative_values():
    with pytest.raises(ValueError, match="coupled_weight_decay"):
        optimizers.CoupledWeightDecaySGD(0.1, coupled_weight_decay=-1.0)


def _schedule_values(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_cosine_schedule_is_a_half_cosine_after_warmup(warmup_epochs):
    steps_per_epoch, epochs = 7, 5
    recipe = dataclasses.replace(configs.IMAGENET, epochs=epochs, batch_size=512,
                                 warmup_epochs=warmup_epochs)
    schedule = schedules.learning_rate_schedule(recipe, steps_per_epoch)
    peak = 0.1 * 512 / 256  # linear scaling from batch 256
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    steps = np.arange(total + 1)
    expected = [
        peak * step / warmup if step < warmup
        else 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        for step in steps
    ]
    np.testing.assert_allclose(_schedule_values(schedule, steps), expected, rtol=1e-5, atol=1e-7)


def test_step_schedule_drops_on_the_first_step_of_each_decay_epoch():
    # ResNeXt's CIFAR rule for 300 epochs: /10 from 1-based epoch 148 (148/300 > 0.49,
    # 147/300 is not), /100 from 1-based epoch 223 (223/300 > 0.74): 0-based 147, 222.
    steps_per_epoch = 10
    schedule = schedules.learning_rate_schedule(configs.CIFAR, steps_per_epoch)
    steps = [0, 1469, 1470, 2219, 2220, 2999]
    np.testing.assert_allclose(
        _schedule_values(schedule, steps), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6
    )


@pytest.mark.parametrize("epochs, drops", [
    (300, (147, 222)), (100, (49, 74)), (10, (4, 7)), (4, (1, 2)), (2, (1,)), (1, ()),
])
def test_cifar_drops_follow_the_reference_fractions(epochs, drops):
    # Hand-worked from train.lua's `epoch/nEpochs > 0.49` and `> 0.74` (1-based epochs):
    # 10 epochs: 5/10 > 0.49 and 8/10 > 0.74, so 0-based epochs 4 and 7 (not 5 and 7).
    assert configs.cifar_decay_epochs(epochs) == drops


def test_shortened_cifar_schedule_drops_where_the_reference_does():
    recipe = dataclasses.replace(configs.CIFAR, epochs=10,
                                 decay_epochs=configs.cifar_decay_epochs(10))
    schedule = schedules.learning_rate_schedule(recipe, steps_per_epoch=3)
    np.testing.assert_allclose(_schedule_values(schedule, [11, 12, 20, 21]),
                               [0.1, 0.01, 0.01, 0.001], rtol=1e-6)


@pytest.mark.parametrize("base, changes, message", [
    (configs.IMAGENET, {"epochs": 0}, "`epochs` must be a positive integer"),
    (configs.CIFAR, {"decay_epochs": (225, 150)}, "`decay_epochs` must be increasing"),
    (configs.CIFAR, {"warmup_epochs": 1}, "`warmup_epochs` applies to the cosine"),
    (configs.IMAGENET, {"learning_rate": float("nan")}, "`learning_rate` must be a finite"),
    (configs.IMAGENET, {"learning_rate": float("inf")}, "`learning_rate` must be a finite"),
    (configs.IMAGENET, {"weight_decay": float("nan")}, "`weight_decay` must be a finite"),
    (configs.IMAGENET, {"momentum": float("nan")}, "`momentum` must be a finite"),
    (configs.CIFAR, {"decay_factor": 0.0}, "`decay_factor` must be in"),
], ids=["epochs", "decay-order", "warmup-step", "lr-nan", "lr-inf", "wd-nan", "momentum-nan",
        "decay-factor"])
def test_recipe_validation_names_the_field(base, changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(base, **changes)


@pytest.mark.parametrize("name, tpu, message", [
    ("tpu", "no-such-tpu", "no TPU answered at 'no-such-tpu'"),
    ("tpu", None, "no TPU answered"),
    ("multiworker", None, "needs TF_CONFIG"),
    ("mirrored", None, "must be one of"),
])
def test_strategy_errors_name_the_argument(monkeypatch, name, tpu, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(InputError, match=message) as error:
        strategies.create_strategy(name, tpu=tpu)
    assert error.value.argument == ("tpu" if name == "tpu" else "strategy")


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="has a GPU")
def test_gpu_strategy_without_a_gpu_is_an_error():
    with pytest.raises(InputError, match="sees no GPU"):
        strategies.create_strategy("gpu")


def test_cpu_strategy():
    assert isinstance(strategies.create_strategy("cpu"), tf.distribute.OneDeviceStrategy)


@pytest.mark.parametrize("kind, policy", [
    ("tpu", "mixed_bfloat16"), ("gpu", "mixed_float16"), ("cpu", "float32"),
])
def test_precision_and_xla_defaults_by_device(kind, policy):
    assert strategies.resolve_precision("auto", kind) == policy
    assert strategies.resolve_precision("fp32", kind) == "float32"
    assert strategies.resolve_precision("mixed_float16", kind) == "mixed_float16"
    assert strategies.resolve_jit_compile("auto", kind) == (kind != "cpu")
    assert strategies.resolve_jit_compile("on", kind) is True


def test_unknown_precision_names_the_argument():
    with pytest.raises(InputError, match="must be one of") as error:
        strategies.resolve_precision("fp16", "gpu")
    assert error.value.argument == "precision"
    assert strategies.device_kind(tf.distribute.get_strategy()) in ("cpu", "gpu")


# A few steps of the real loop on a small model without BatchNorm, whose
# result cannot depend on how the batch is split between replicas.

BATCH, STEPS = 16, 3


def _dataset_fn(training):
    return training_helpers.tiny_dataset_fn(training, BATCH, STEPS)


def _train(strategy, run_dir, pattern=(1, 2, 1, 4), **options):
    keras.utils.set_random_seed(1)
    recipe = dataclasses.replace(configs.IMAGENET, epochs=1, batch_size=BATCH,
                                 reference_batch_size=BATCH, weight_decay=1e-2)
    trainer = trainer_lib.Trainer(
        strategy, lambda: training_helpers.tiny_classifier(pattern), recipe, STEPS,
        trainer_lib.RunOptions(str(run_dir), verbose=0, **options),
    )
    initial = trainer.model.get_weights()
    metrics = trainer.fit(_dataset_fn(True), _dataset_fn(False),
                          training_helpers.tiny_run_config(recipe))
    assert metrics["steps_done"] == STEPS
    assert int(trainer.optimizer.iterations.numpy()) == STEPS
    assert not np.allclose(initial[0], trainer.model.get_weights()[0])
    return trainer, metrics


def _assert_same_training(a, b, tolerance):
    for x, y in zip(a[0].model.get_weights(), b[0].model.get_weights()):
        np.testing.assert_allclose(x, y, rtol=tolerance, atol=tolerance)
    for name in ("loss", "top1", "top5"):
        np.testing.assert_allclose(a[1]["final"][name], b[1]["final"][name],
                                   rtol=tolerance, atol=tolerance)


def test_mirrored_strategy_and_xla_train_as_the_default_strategy(tmp_path):
    default = _train(tf.distribute.get_strategy(), tmp_path / "default")
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, "conftest sets up two logical CPUs"
    # Reduction to one device, not collective ops: collective instance keys
    # restart with every strategy and clash with an earlier test's in the process.
    mirrored_strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    mirrored = _train(mirrored_strategy, tmp_path / "mirrored")
    _assert_same_training(default, mirrored, 1e-5)
    xla = _train(tf.distribute.get_strategy(), tmp_path / "xla", jit_compile=True)
    _assert_same_training(default, xla, 1e-4)


@pytest.mark.parametrize("policy, compute_dtype, pattern, tolerance", [
    ("mixed_float16", "float16", (1, 2, 1, 4), 1e-2),
    ("mixed_bfloat16", "bfloat16", (1, 2, 1, 4), 5e-2),
])
def test_mixed_precision_trains_close_to_float32(tmp_path, policy, compute_dtype, pattern,
                                                 tolerance):
    reference = _train(tf.distribute.get_strategy(), tmp_path / "fp32", pattern)
    mixed = _train(tf.distribute.get_strategy(), tmp_path / policy, pattern, precision=policy)
    assert mixed[0].model.get_layer("psconv").compute_dtype == compute_dtype
    assert isinstance(mixed[0].optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")
    assert keras.config.dtype_policy().name == "float32", "the global policy is restored"
    _assert_same_training(reference, mixed, tolerance)
    best = keras.models.load_model(tmp_path / policy / "best.keras", compile=False)
    assert best.get_layer("psconv").dtype_policy.name == "float32"
    for x, y in zip(best.get_weights(), mixed[0].model.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_batch_must_split_evenly_between_replicas(tmp_path):
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    recipe = dataclasses.replace(configs.IMAGENET, batch_size=15)
    with pytest.raises(InputError, match="15 must be divisible by the 2 replicas"):
        trainer_lib.Trainer(tf.distribute.MirroredStrategy(devices), training_helpers.tiny_classifier, recipe, 3,
                          trainer_lib.RunOptions(str(tmp_path)))
