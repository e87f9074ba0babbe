"""Distributed, resumable training of the zoo's classifiers.

Strategy selection, precision and XLA, the recipes' optimizer and schedule,
and a training loop that resumes where a killed run last saved.

The loop is our own rather than `keras.Model.fit`, with Keras's model,
optimizer, losses, metrics and progress bar, for two reasons found in Keras
3.15:
- `fit` and its `train_function` fail under `MultiWorkerMirroredStrategy`:
  they reduce the per-replica batch and the scalar logs with
  `strategy.reduce(..., axis=0)` (keras-team/keras#20585);
- `keras.callbacks.BackupAndRestore(save_freq=N)` records the step within
  the epoch but restarts the saved epoch from its first step: a run killed
  at step 17 of 4 x 10 steps (saved at step 15) ends after 45 optimizer
  steps, not 40, its cosine schedule at zero five steps early.
Here a `tf.train.CheckpointManager` saves the model, the optimizer (its
iteration count drives the schedule) and the number of steps done in one
checkpoint; a restarted run restores it and trains the rest of the saved
epoch, then the remaining epochs. Only the steps since the last save are
lost; the order of the data after a restart is a fresh shuffle.
"""

import dataclasses
import json
import os
import sys
import time
import warnings

import keras
import tensorflow as tf
from keras import ops

from configs import InputError
from configs import describe_error
from psconv_tf import models

STRATEGIES = ("auto", "cpu", "gpu", "multiworker", "tpu")
PRECISIONS = ("auto", "fp32", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("auto", "on", "off")
# Input-pipeline failures worth a plain message rather than a traceback.
_DATA_ERROR_MARKERS = (
    "Corrupt image file",
    "Invalid JPEG data",
    "Invalid PNG data",
    "Unknown image file format",
)


# Strategy, precision, XLA ----------------------------------------------------


def create_strategy(name="auto", tpu=None):
    """Creates the `tf.distribute` strategy named on the command line.

    Args:
        name: one of `STRATEGIES`:
            - "cpu": `OneDeviceStrategy` on the first CPU;
            - "gpu": `MirroredStrategy` over all local GPUs;
            - "multiworker": `MultiWorkerMirroredStrategy`, the cluster and
              this worker's place in it read from `TF_CONFIG`;
            - "tpu": `TPUStrategy` on the TPU `tpu` resolves to;
            - "auto": "tpu" if `tpu` is given, else "multiworker" if
              `TF_CONFIG` lists several workers, else "gpu" if there is a
              GPU, else "cpu".
        tpu: TPU name or grpc:// address for `TPUClusterResolver` ("local"
            on a TPU VM; None reads `TPU_NAME`).

    Returns:
        A `tf.distribute.Strategy`.
    """
    if name not in STRATEGIES:
        raise InputError(f"--strategy must be one of {', '.join(STRATEGIES)}; got {name!r}.")
    if name == "auto":
        if tpu:
            name = "tpu"
        elif _tf_config_workers() > 1:
            name = "multiworker"
        else:
            name = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise InputError(
                "--strategy gpu: TensorFlow sees no GPU (install the "
                "tensorflow[and-cuda] package on a machine with a CUDA GPU)."
            )
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise InputError(
                "--strategy multiworker needs TF_CONFIG on every worker, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}.'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


def _tf_config_workers():
    if not os.environ.get("TF_CONFIG"):
        return 0
    cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    return sum(cluster.num_tasks(job) for job in ("chief", "worker") if job in cluster.jobs)


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as error:  # the resolver raises whatever its lookup raises
        raise InputError(
            f"--strategy tpu: no TPU answered at --tpu {tpu!r} "
            f"({describe_error(error)}). Pass the "
            "TPU's name or grpc:// address as --tpu, or --tpu local on a TPU VM."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def device_kind(strategy):
    """What the strategy's replicas run on: "tpu", "gpu" or "cpu"."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy, which uses a GPU if there is one
        devices = [device.name for device in tf.config.list_logical_devices()]
    return "gpu" if any("GPU" in device.upper() for device in devices) else "cpu"


def resolve_precision(precision, kind):
    """The Keras dtype policy for --precision on a device kind.

    "auto" is mixed_bfloat16 on TPU, mixed_float16 on GPU (with dynamic loss
    scaling) and float32 on CPU, where the mixed policies run but gain nothing.
    """
    if precision not in PRECISIONS:
        raise InputError(
            f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}."
        )
    if precision == "auto":
        return {"tpu": "mixed_bfloat16", "gpu": "mixed_float16"}.get(kind, "float32")
    return "float32" if precision == "fp32" else precision


def resolve_jit_compile(jit_compile, kind):
    """Whether to XLA-compile the step, for --jit-compile on a device kind.

    "auto" compiles on GPU and TPU, not on CPU: on a 2-core CPU (TF 2.21) a
    ps_cifar_resnet20 training step (batch 64, 32 x 32) took 1.66 s with
    XLA against 0.64 s without, ps_resnet50 (batch 8, 112 x 112) 2.60 s
    against 0.94 s, and the standard twins 0.59 s vs 0.33 s and 1.53 s vs
    0.81 s: XLA's CPU convolutions are slower than oneDNN's.
    """
    if jit_compile not in JIT_MODES:
        raise InputError(
            f"--jit-compile must be one of {', '.join(JIT_MODES)}; got {jit_compile!r}."
        )
    if jit_compile == "auto":
        return kind in ("gpu", "tpu")
    return jit_compile == "on"


# Optimizer and schedule ------------------------------------------------------


@keras.saving.register_keras_serializable(package="psconv_training")
class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 term in the gradient, as PyTorch's.

    `torch.optim.SGD(weight_decay=wd)`, which the paper's recipes use, adds
    `wd * w` to the gradient of every weight before the momentum ("coupled"
    decay). Keras's `SGD(weight_decay=wd)` instead shrinks every weight by
    `learning_rate * wd * w` outside the momentum ("decoupled"), which with
    momentum 0.9 decays about ten times less than the recipes specify. This
    optimizer adds `coupled_weight_decay * w` to the gradient of every
    trainable weight (BatchNorm scales and biases included, as PyTorch's
    default) and then takes Keras's momentum step.

    Keras's momentum step (m = momentum * m - lr * g; w += m) equals
    PyTorch's (b = momentum * b + g; w -= lr * b) while the learning rate
    is constant; after a change of learning rate the two differ only while
    the momentum of earlier steps fades (0.9 ** k after k steps).

    Args:
        learning_rate: float or `keras.optimizers.schedules` schedule.
        momentum: float in [0, 1).
        coupled_weight_decay: L2 coefficient added to the gradient.
        **kwargs: other arguments of `keras.optimizers.SGD`.

    Example:

    >>> optimizer = CoupledWeightDecaySGD(0.1, momentum=0.9, coupled_weight_decay=1e-4)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, coupled_weight_decay=0.0,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        if coupled_weight_decay < 0:
            raise ValueError(
                "Argument `coupled_weight_decay` must be non-negative. "
                f"Received: coupled_weight_decay={coupled_weight_decay}"
            )
        self.coupled_weight_decay = coupled_weight_decay

    def update_step(self, gradient, variable, learning_rate):
        decay = ops.cast(self.coupled_weight_decay, variable.dtype)
        gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(decay, variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay}


def learning_rate_schedule(recipe, steps_per_epoch):
    """The recipe's learning rate as a function of the optimizer step.

    "cosine": 0.5 * peak * (1 + cos(pi * t / T)) over the T steps after an
    optional linear warm-up from zero; "step": the peak, multiplied by
    `decay_factor` from the first step of every epoch in `decay_epochs`.

    Args:
        recipe: a `configs.Recipe`.
        steps_per_epoch: optimizer steps per epoch.
    """
    peak = recipe.scaled_learning_rate
    total_steps = recipe.epochs * steps_per_epoch
    if recipe.schedule == "cosine":
        warmup_steps = round(recipe.warmup_epochs * steps_per_epoch)
        if not warmup_steps:
            return keras.optimizers.schedules.CosineDecay(peak, total_steps)
        return keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup_steps, warmup_target=peak, warmup_steps=warmup_steps
        )
    if not recipe.decay_epochs:
        return peak
    # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i].
    boundaries = [epoch * steps_per_epoch - 1 for epoch in recipe.decay_epochs]
    values = [peak * recipe.decay_factor**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def build_optimizer(recipe, steps_per_epoch, precision="float32"):
    """The recipe's SGD; wrapped in a `LossScaleOptimizer` for mixed_float16."""
    optimizer = CoupledWeightDecaySGD(
        learning_rate_schedule(recipe, steps_per_epoch),
        momentum=recipe.momentum,
        coupled_weight_decay=recipe.weight_decay,
    )
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


# The training loop -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run executes (not what it learns).

    Attributes:
        run_dir: folder of the run's files (see `Trainer.fit`).
        precision: Keras dtype policy: "float32", "mixed_float16" or
            "mixed_bfloat16".
        jit_compile: XLA-compile each replica's forward and backward pass.
        backup_every: save the training state every this many steps (and at
            the end of every epoch).
        steps_per_loop: steps run by one call of the compiled loop (raise it
            on TPUs to keep the host out of the way).
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
    """

    run_dir: str
    precision: str = "float32"
    jit_compile: bool = False
    backup_every: int = 1000
    steps_per_loop: int = 1
    verbose: int = 1

    def __post_init__(self):
        for name in ("backup_every", "steps_per_loop"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}.")


class Trainer:
    """Trains a classifier with a recipe under a strategy, resumably.

    Args:
        strategy: a `tf.distribute.Strategy`.
        build_model: called without arguments under the strategy's scope and
            the run's dtype policy; returns a Keras model of logits.
        recipe: a `configs.Recipe`.
        steps_per_epoch: optimizer steps per epoch.
        options: `RunOptions`.

    Example:

    >>> trainer = Trainer(tf.distribute.get_strategy(), build_model, recipe, 390,
    ...                   RunOptions("runs/demo"))
    >>> metrics = trainer.fit(train_input, eval_input, config={"model": "cifar_resnet20"})
    """

    def __init__(self, strategy, build_model, recipe, steps_per_epoch, options):
        if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
            raise InputError(
                f"steps per epoch must be a positive integer; got {steps_per_epoch!r} "
                "(is the training set smaller than one batch?)."
            )
        if recipe.batch_size % strategy.num_replicas_in_sync:
            raise InputError(
                f"--batch-size {recipe.batch_size} must be divisible by the "
                f"{strategy.num_replicas_in_sync} replicas."
            )
        self.strategy = strategy
        self.recipe = recipe
        self.steps_per_epoch = steps_per_epoch
        self.options = options
        self.build_model = build_model
        self._float32_model = None
        with _dtype_policy(options.precision), strategy.scope():
            self.model = build_model()
            self.optimizer = build_optimizer(recipe, steps_per_epoch, options.precision)
            self.optimizer.build(self.model.trainable_variables)
            num_classes = self.model.output_shape[-1]
            self.train_metrics = _classification_metrics(num_classes)
            self.eval_metrics = _classification_metrics(num_classes)
        # The position in the recipe and the best validation metrics so far,
        # saved with the weights.
        self.steps_done = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best = {"epoch": tf.Variable(-1, dtype=tf.int64, trainable=False)}
        for metric in self.eval_metrics:
            self.best[metric.name] = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self._forward_backward = tf.function(
            self._forward_backward_fn, jit_compile=options.jit_compile
        )
        self._predict = tf.function(
            lambda images: self.model(images, training=False),
            jit_compile=options.jit_compile,
            reduce_retracing=True,
        )

    @property
    def learning_rate(self):
        """The learning rate of the next step."""
        return float(tf.convert_to_tensor(self.optimizer.learning_rate))

    # Steps, per replica and distributed.

    def _forward_backward_fn(self, images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=self.recipe.batch_size
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        return per_example, logits, gradients

    def _replica_train_step(self, images, labels):
        per_example, logits, gradients = self._forward_backward(images, labels)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        _update_metrics(self.train_metrics, labels, logits, per_example)

    @tf.function
    def train_steps(self, iterator, num_steps):
        """Runs `num_steps` (a scalar tensor) steps on a distributed iterator."""
        for _ in tf.range(num_steps):
            self.strategy.run(self._replica_train_step, args=next(iterator))

    def _replica_eval_step(self, images, labels):
        logits = tf.cast(self._predict(images), tf.float32)
        per_example = keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True
        )
        _update_metrics(self.eval_metrics, labels, logits, per_example)

    @tf.function
    def _evaluate_batches(self, eval_dataset):
        # One compiled loop: no Python round trip per batch.
        for batch in eval_dataset:
            self.strategy.run(self._replica_eval_step, args=batch)

    def evaluate(self, eval_dataset):
        """Loss, top-1 and top-5 accuracy over one pass of a distributed dataset."""
        for metric in self.eval_metrics:
            metric.reset_state()
        with warnings.catch_warnings():
            # Looping over a distributed dataset in a tf.function reads its
            # options in graph mode, which TensorFlow warns about, harmlessly.
            warnings.filterwarnings("ignore", message="To make it possible to preserve")
            self._evaluate_batches(eval_dataset)
        return _results(self.eval_metrics)

    # The loop.

    def fit(self, train_input, eval_input, config):
        """Trains the recipe's epochs, evaluating after each; resumes if saved.

        Writes into `options.run_dir` (on the chief; other workers of a
        multi-worker run write the same files into
        `run_dir/workers/<task>_<index>/`):
        - config.json: `config`, the run's description;
        - backup/: the latest training state (model, optimizer, steps done,
          best validation metrics), every `backup_every` steps and epoch;
        - best.keras: the model (float32) of the best validation top-1;
        - log.jsonl: one JSON record per start, epoch and backup;
        - logs/: TensorBoard scalars;
        - metrics.json: the final and best validation metrics.

        Args:
            train_input: `dataset_fn(input_context)` of endless training
                batches of (images, int labels).
            eval_input: `dataset_fn(input_context)` of one pass over the
                validation set.
            config: JSON-serializable dict saved as config.json.

        Returns:
            The dict written to metrics.json.
        """
        output_dir = worker_output_dir(self.strategy, self.options.run_dir)
        write_json(os.path.join(output_dir, "config.json"), config)
        checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, steps_done=self.steps_done,
            **{f"best_{name}": variable for name, variable in self.best.items()},
        )
        backups = tf.train.CheckpointManager(
            checkpoint, os.path.join(output_dir, "backup"), max_to_keep=1
        )
        # Every worker resumes from the chief's backup.
        latest = tf.train.latest_checkpoint(os.path.join(self.options.run_dir, "backup"))
        if latest:
            self._restore(checkpoint, latest)
        log = _RunLog(output_dir, self)
        log.record("start", resumed=bool(latest), steps_per_epoch=self.steps_per_epoch,
                   epochs=self.recipe.epochs)

        started = time.time()
        train_dataset = self.strategy.distribute_datasets_from_function(train_input)
        eval_dataset = self.strategy.distribute_datasets_from_function(eval_input)
        try:
            eval_logs = self._train_epochs(iter(train_dataset), eval_dataset, backups, log)
        except tf.errors.InvalidArgumentError as error:
            if not any(marker in error.message for marker in _DATA_ERROR_MARKERS):
                raise
            raise InputError(f"the input pipeline failed: {_error_text(error)}") from None
        metrics = {
            "model": config.get("model"),
            "epochs": self.recipe.epochs,
            "steps_done": int(self.steps_done.numpy()),
            "final": eval_logs,
            "best": {("epoch" if name == "epoch" else f"val_{name}"): variable.numpy().item()
                     for name, variable in self.best.items()},
            "seconds": round(time.time() - started, 1),
        }
        path = os.path.join(output_dir, "metrics.json")
        write_json(path, metrics)
        if self.options.verbose:
            print(f"Metrics written to {path}", flush=True)
        return metrics

    def _restore(self, checkpoint, path):
        try:
            # expect_partial only silences warnings on exit; the assertion checks.
            checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError):
            raise InputError(
                f"--run-dir {self.options.run_dir} holds the backup of another model "
                "(its variables do not match this one's); use a new --run-dir."
            ) from None

    def _train_epochs(self, iterator, eval_dataset, backups, log):
        start_epoch, start_step = divmod(int(self.steps_done.numpy()), self.steps_per_epoch)
        eval_logs = None
        for epoch in range(start_epoch, self.recipe.epochs):
            first_step = start_step if epoch == start_epoch else 0
            epoch_started = time.time()
            train_logs = self._train_epoch(epoch, first_step, iterator, backups, log)
            eval_logs = self.evaluate(eval_dataset)
            if eval_logs["top1"] > self.best["top1"].numpy():
                self.best["epoch"].assign(epoch)
                for name, value in eval_logs.items():
                    self.best[name].assign(value)
                self._save_best(log.output_dir)
            log.epoch(epoch, self.steps_per_epoch - first_step, train_logs, eval_logs,
                      time.time() - epoch_started)
            backups.save(checkpoint_number=self.steps_done)
        if eval_logs is None:  # restarted after the last epoch
            eval_logs = self.evaluate(eval_dataset)
        return eval_logs

    def _train_epoch(self, epoch, step, iterator, backups, log):
        for metric in self.train_metrics:
            metric.reset_state()
        if self.options.verbose:
            print(f"Epoch {epoch + 1}/{self.recipe.epochs}", flush=True)
        progress = keras.utils.Progbar(
            self.steps_per_epoch, verbose=self.options.verbose,
            stateful_metrics=[metric.name for metric in self.train_metrics],
        )
        progress.update(step)
        backup_every = self.options.backup_every
        while step < self.steps_per_epoch:
            num_steps = min(
                self.options.steps_per_loop,
                self.steps_per_epoch - step,
                backup_every - int(self.steps_done.numpy()) % backup_every,
            )
            self.train_steps(iterator, tf.constant(num_steps))
            step += num_steps
            self.steps_done.assign_add(num_steps)
            logs = _results(self.train_metrics)
            progress.update(step, list(logs.items()))
            # The end of an epoch saves after its evaluation.
            if self.steps_done.numpy() % backup_every == 0 and step < self.steps_per_epoch:
                backups.save(checkpoint_number=self.steps_done)
                log.record("backup")
        return logs

    def _save_best(self, output_dir):
        """Saves the model as best.keras, in float32 whatever the precision."""
        model = self.model
        if self.options.precision != "float32":
            if self._float32_model is None:
                with _dtype_policy("float32"):
                    self._float32_model = self.build_model()
            model = self._float32_model
            model.set_weights(self.model.get_weights())
        model.save(os.path.join(output_dir, "best.keras"))


def _classification_metrics(num_classes):
    metrics = [keras.metrics.Mean(name="loss"),
               keras.metrics.SparseCategoricalAccuracy(name="top1")]
    if num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"))
    return metrics


def _update_metrics(metrics, labels, logits, per_example_loss):
    loss, *accuracies = metrics
    loss.update_state(per_example_loss)
    for accuracy in accuracies:
        accuracy.update_state(labels, logits)


def _results(metrics):
    return {metric.name: float(metric.result()) for metric in metrics}


class _RunLog:
    """Appends JSON records of the run's progress to log.jsonl, and TensorBoard."""

    def __init__(self, output_dir, trainer):
        self.output_dir = output_dir
        self.trainer = trainer
        self.path = os.path.join(output_dir, "log.jsonl")
        self.summaries = tf.summary.create_file_writer(os.path.join(output_dir, "logs"))

    def _position(self):
        steps_done = int(self.trainer.steps_done.numpy())
        epoch, step = divmod(steps_done, self.trainer.steps_per_epoch)
        return {
            "steps_done": steps_done, "epoch": epoch, "step": step,
            "optimizer_iterations": int(self.trainer.optimizer.iterations.numpy()),
            "learning_rate": self.trainer.learning_rate,
        }

    def record(self, event, **fields):
        record = {"event": event, **self._position(), **fields, "time": time.time()}
        with tf.io.gfile.GFile(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")

    def epoch(self, epoch, steps, train_logs, eval_logs, seconds):
        val_logs = {f"val_{name}": value for name, value in eval_logs.items()}
        self.record("epoch", completed_epoch=epoch, steps=steps, seconds=round(seconds, 2),
                    **train_logs, **val_logs)
        with self.summaries.as_default(step=int(self.trainer.steps_done.numpy())):
            for name, value in {**train_logs, **val_logs}.items():
                tf.summary.scalar(name, value)
            tf.summary.scalar("learning_rate", self.trainer.learning_rate)
        self.summaries.flush()
        if self.trainer.options.verbose:
            print(" - ".join(f"{name}: {value:.4f}" for name, value in val_logs.items()),
                  flush=True)


class _dtype_policy:
    """Sets the global Keras dtype policy inside a `with` block."""

    def __init__(self, policy):
        self.policy = policy

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)

    def __exit__(self, *exc_info):
        keras.config.set_dtype_policy(self.previous)


def worker_output_dir(strategy, run_dir):
    """run_dir on the chief; a folder of its own inside it on other workers.

    Every worker saves (saving may involve collective ops), so non-chief
    workers write their copies where they clobber nothing.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return run_dir
    task_type, task_id = resolver.task_type, resolver.task_id
    jobs = resolver.cluster_spec().jobs
    if task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in jobs):
        return run_dir
    return os.path.join(run_dir, "workers", f"{task_type}_{task_id}")


def write_json(path, data):
    """Writes `data` as JSON to a local or gs:// path, creating its folder."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as file:
        json.dump(data, file, indent=2)


def _error_text(error):
    """The lines of a TensorFlow runtime error that say what went wrong."""
    lines = [line.strip() for line in error.message.splitlines()]
    return " ".join(line for line in lines
                    if line and not line.startswith(("[[", "Detected at node",
                                                     "Graph execution error")))


# Command line ----------------------------------------------------------------


def add_model_arguments(parser, default_model):
    """--model, --pattern, --cyclic."""
    parser.add_argument(
        "--model", default=default_model, metavar="NAME",
        help=f"zoo model (psconv_tf.models.list_models()); default {default_model}",
    )
    parser.add_argument(
        "--pattern", default="1,2,1,4",
        help="dilation rates of one PSConv cycle, for ps_ models; default 1,2,1,4",
    )
    parser.add_argument(
        "--cyclic", default="both", choices=("both", "input", "output"),
        help="PSConv rate shift along both channel axes (the paper) or one "
             "(Table 5 ablations); default both",
    )


def check_model_name(name):
    """Raises an `InputError` naming the choices unless `name` is a zoo model."""
    if name not in models.list_models():
        raise InputError(
            f"--model: unknown model {name!r}; choose from "
            f"{', '.join(models.list_models())}."
        )


def model_kwargs_from_args(args):
    """Validated zoo arguments: ps_ models take the pattern and cyclic mode."""
    check_model_name(args.model)
    if not args.model.startswith("ps_"):
        return {}
    try:
        pattern = [int(rate) for rate in args.pattern.split(",")]
    except ValueError:
        raise InputError(f"--pattern: comma-separated integers expected; got {args.pattern!r}.") from None
    return {"pattern": pattern, "cyclic": args.cyclic}


def add_recipe_arguments(parser, recipe):
    """Recipe fields as options, defaulting to `recipe`."""
    parser.add_argument("--epochs", type=int, default=recipe.epochs,
                        help=f"training epochs; default {recipe.epochs}")
    parser.add_argument("--batch-size", type=int, default=recipe.batch_size,
                        help=f"global batch, all replicas together; default {recipe.batch_size}")
    parser.add_argument(
        "--learning-rate", type=float, default=recipe.learning_rate,
        help=f"peak learning rate for a batch of {recipe.reference_batch_size}, "
             f"scaled linearly with --batch-size; default {recipe.learning_rate}",
    )
    parser.add_argument("--momentum", type=float, default=recipe.momentum,
                        help=f"SGD momentum; default {recipe.momentum}")
    parser.add_argument(
        "--weight-decay", type=float, default=recipe.weight_decay,
        help="L2 weight decay added to the gradient of every weight before the "
             "momentum, as torch.optim.SGD(weight_decay=...), not Keras's "
             f"decoupled weight_decay; default {recipe.weight_decay}",
    )


def recipe_from_args(recipe, args, **fields):
    """`recipe` with the values of `add_recipe_arguments`' options and `fields`."""
    try:
        return dataclasses.replace(
            recipe, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, momentum=args.momentum,
            weight_decay=args.weight_decay, **fields,
        )
    except ValueError as error:
        raise InputError(f"invalid recipe: {error}") from None


def add_runtime_arguments(parser, default_run_dir):
    """Strategy, precision, XLA, run folder and logging options."""
    parser.add_argument("--run-dir", default=default_run_dir,
                        help=f"folder of the run's files; default {default_run_dir}")
    parser.add_argument(
        "--strategy", default="auto", choices=STRATEGIES,
        help="tf.distribute strategy: cpu (OneDeviceStrategy), gpu "
             "(MirroredStrategy over the local GPUs), multiworker "
             "(MultiWorkerMirroredStrategy from TF_CONFIG), tpu (TPUStrategy "
             "for --tpu); auto: tpu if --tpu is given, else multiworker if "
             "TF_CONFIG lists several workers, else gpu if any, else cpu",
    )
    parser.add_argument("--tpu", default=None,
                        help="TPU name or grpc:// address ('local' on a TPU VM)")
    parser.add_argument(
        "--jit-compile", default="auto", choices=JIT_MODES,
        help="XLA-compile the forward and backward pass; auto: on for GPU and "
             "TPU, off for CPU (measured slower there)",
    )
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS,
        help="auto: mixed_bfloat16 on TPU, mixed_float16 (with loss scaling) "
             "on GPU, fp32 on CPU",
    )
    parser.add_argument(
        "--backup-every", type=int, default=1000, metavar="STEPS",
        help="save the training state every STEPS steps and every epoch; a "
             "run restarted with the same --run-dir resumes from it; default 1000",
    )
    parser.add_argument(
        "--steps-per-loop", type=int, default=1,
        help="steps per call of the compiled training loop (e.g. 100 on TPU); default 1",
    )
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initialization and the augmentation; default 0")
    parser.add_argument(
        "--verbose", type=int, default=1 if sys.stdout.isatty() else 2, choices=(0, 1, 2),
        help="0 silent, 1 progress bar, 2 one line per epoch; default 1 on a "
             "terminal, else 2",
    )


def runtime_from_args(args):
    """(strategy, RunOptions) from the runtime arguments."""
    strategy = create_strategy(args.strategy, args.tpu)
    kind = device_kind(strategy)
    options = RunOptions(
        run_dir=args.run_dir,
        precision=resolve_precision(args.precision, kind),
        jit_compile=resolve_jit_compile(args.jit_compile, kind),
        backup_every=args.backup_every,
        steps_per_loop=args.steps_per_loop,
        verbose=args.verbose,
    )
    return strategy, options


def run_main(main, argv=None):
    """Runs `main(argv)`, printing an `InputError` as a one-line error."""
    try:
        return main(argv)
    except InputError as error:
        sys.exit(f"error: {error}")
