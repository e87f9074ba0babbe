"""Distributed, resumable training of every task: `Trainer`.

The loop is our own rather than `keras.Model.fit`, with Keras's model,
optimizer, losses, metrics and callbacks, for two reasons found in Keras
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

A run refuses to resume with settings other than its stored config.json
(`RunOptions.allow_changes` accepts those of `run_config.SAFE_CHANGES`),
and stops with `NonFiniteLossError`, saving nothing, as soon as the loss
becomes NaN or infinite: the last backup and best.keras stay good. A run
whose recipe is done does nothing but report it. The run folder is claimed
(`ownership`: a folder of other files is refused, one process at a time)
before anything is written. SIGINT and SIGTERM stop the loop at the next
step, after a backup (`stopping`); a write that fails (a full disk) stops
it with `RunWriteError`, the previous files intact; data that yields no
batch (every image undecodable) is an `InputError`, not a wait forever.
"""

import math
import time
import warnings

import keras
import tensorflow as tf

from psconv_tf.runtime import files
from psconv_tf.runtime import ownership
from psconv_tf.runtime import run_config
from psconv_tf.training.backup import Backup
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import RunWriteError
from psconv_tf.runtime.errors import writing
from psconv_tf.training.metrics import classification_metrics
from psconv_tf.training.metrics import metric_results
from psconv_tf.training.metrics import update_metrics
from psconv_tf.training.optimizer import build_optimizer
from psconv_tf.training.run_log import Progress
from psconv_tf.training.run_log import RunLog
from psconv_tf.training.run_options import RunOptions  # noqa: F401 (the Trainer's options)
from psconv_tf.training.run_state import RunState
from psconv_tf.training.run_state import read_metrics
from psconv_tf.training.schedules import learning_rate_schedule
from psconv_tf.training.stopping import StopSignals
from psconv_tf.training.stopping import TrainingStopped
from psconv_tf.training.tuning import describe as describe_tuning
from psconv_tf.training.tuning import tune_on_first_batch
from psconv_tf.runtime.strategy import dtype_policy
from psconv_tf.runtime.strategy import is_multi_worker
from psconv_tf.runtime.strategy import worker_output_dir


class Trainer:
    """Trains a model with a recipe under a strategy, resumably.

    The task hooks, a classifier's by default; other tasks (detection)
    subclass it and override them:
    - `MONITOR`: the validation metric, higher is better, whose best epoch
      is kept as best.keras; `KIND`: the run folder's `ownership.Kind`;
    - `create_metrics`, `per_example_loss`, `update_metrics`: what is
      learned and reported (labels and outputs may be nested structures);
    - `evaluation_input` and `evaluate`: the validation data and its
      metrics (named by `evaluation_names`), where they are not the
      training metrics' over a distributed dataset.

    Args:
        strategy: a `tf.distribute.Strategy`.
        build_model: called without arguments under the strategy's scope and
            the run's dtype policy; returns a Keras model of logits.
        recipe: a `configs.Recipe`.
        steps_per_epoch: optimizer steps per epoch.
        options: `RunOptions`.

    Example (what `classification.train` does):

        trainer = Trainer(strategy, lambda: models.get(config.model,
                                                       **config.model_arguments()),
                          config.recipe, steps_per_epoch, RunOptions("runs/demo"))
        metrics = trainer.fit(train_input, eval_input, config, callbacks=[...])
    """

    MONITOR = "top1"
    KIND = run_config.KIND

    def __init__(self, strategy, build_model, recipe, steps_per_epoch, options):
        if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
            raise InputError(
                f"must be a positive integer; got {steps_per_epoch!r} "
                "(is the training set smaller than one batch?).", argument="steps_per_epoch",
            )
        if recipe.batch_size % strategy.num_replicas_in_sync:
            raise InputError(
                f"{recipe.batch_size} must be divisible by the "
                f"{strategy.num_replicas_in_sync} replicas.", argument="batch_size",
            )
        self.strategy = strategy
        self.recipe = recipe
        self.steps_per_epoch = steps_per_epoch
        self.options = options
        self.build_model = build_model
        self._float32_model = None
        self._run = None  # the run in progress (`run_state.RunState`), in `fit`
        with dtype_policy(options.precision), strategy.scope():
            self.model = build_model()
            self.optimizer = build_optimizer(
                recipe, learning_rate_schedule(recipe, steps_per_epoch), options.precision)
            self.optimizer.build(self.model.trainable_variables)
            self.train_metrics = self.create_metrics()
            self.eval_metrics = self.create_metrics()
        # The position in the recipe and the best validation metrics so far,
        # saved with the weights.
        self.steps_done = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Seconds of training and evaluation, summed over the run's processes.
        self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.best = {"epoch": tf.Variable(-1, dtype=tf.int64, trainable=False)}
        for name in self.evaluation_names():
            self.best[name] = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
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

    def position(self):
        """Where the run is: steps done, epoch, step, learning rate."""
        steps_done = int(self.steps_done.numpy())
        epoch, step = divmod(steps_done, self.steps_per_epoch)
        return {
            "steps_done": steps_done, "epoch": epoch, "step": step,
            "optimizer_iterations": int(self.optimizer.iterations.numpy()),
            "learning_rate": self.learning_rate,
        }

    # The task hooks (see the class docstring).

    def create_metrics(self):
        """The metrics of training and evaluation; the first is the mean loss."""
        return classification_metrics(self.model.output_shape[-1])

    def per_example_loss(self, labels, outputs, images):
        """The loss of every example of a batch (float32 outputs)."""
        return keras.losses.sparse_categorical_crossentropy(labels, outputs, from_logits=True)

    def update_metrics(self, metrics, labels, outputs, per_example_loss):
        """Updates `metrics` (from `create_metrics`) with a batch."""
        update_metrics(metrics, labels, outputs, per_example_loss)

    def evaluation_names(self):
        """The names of what `evaluate` returns, `MONITOR` among them."""
        return [metric.name for metric in self.eval_metrics]

    def evaluation_input(self, eval_input):
        """What `evaluate` takes, from `fit`'s `eval_input`: a distributed dataset."""
        return self.strategy.distribute_datasets_from_function(eval_input)

    # Steps, per replica and distributed.

    def _forward_backward_fn(self, images, labels):
        with tf.GradientTape() as tape:
            outputs = _float32(self.model(images, training=True))
            per_example = self.per_example_loss(labels, outputs, images)
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=self.recipe.batch_size
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        return per_example, outputs, gradients

    def _replica_train_step(self, images, labels):
        per_example, outputs, gradients = self._forward_backward(images, labels)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        self.update_metrics(self.train_metrics, labels, outputs, per_example)

    @tf.function
    def train_steps(self, iterator, num_steps):
        """Runs `num_steps` (a scalar tensor) steps on a distributed iterator."""
        for _ in tf.range(num_steps):
            self.strategy.run(self._replica_train_step, args=next(iterator))

    def _replica_eval_step(self, images, labels):
        outputs = _float32(self._predict(images))
        per_example = self.per_example_loss(labels, outputs, images)
        self.update_metrics(self.eval_metrics, labels, outputs, per_example)

    @tf.function
    def _evaluate_batches(self, iterator, num_batches):
        """Evaluates up to `num_batches` batches; returns how many there were."""
        done = tf.constant(0)
        for _ in tf.range(num_batches):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            self.strategy.run(self._replica_eval_step, args=batch.get_value())
            done += 1
        return done

    def evaluate(self, eval_dataset, title="evaluation"):
        """The evaluation metrics (a classifier's loss, top-1 and top-5
        accuracy) over one pass of `evaluation_input`'s dataset.

        Raises:
            InputError: the dataset yielded no batch.
        """
        for metric in self.eval_metrics:
            metric.reset_state()
        progress = Progress(title, None, self.options.verbose, self.options.log_every)
        chunk = tf.constant(max(self.options.steps_per_loop, 10))
        batches = 0
        with warnings.catch_warnings():
            # Iterating a distributed dataset in a tf.function reads its
            # options in graph mode, which TensorFlow warns about, harmlessly.
            warnings.filterwarnings("ignore", message="To make it possible to preserve")
            iterator = iter(eval_dataset)
            while True:
                done = int(self._evaluate_batches(iterator, chunk))
                batches += done
                if done < int(chunk):
                    break
                progress.update(batches, metric_results(self.eval_metrics))
                self._stop_if_requested(save=False)
        if not batches:
            if self._run is None:
                raise InputError("the validation data yielded no batch.", argument="eval_input")
            raise self._run.data_ran_out("eval")
        progress.update(batches, metric_results(self.eval_metrics), finished=True)
        return metric_results(self.eval_metrics)

    # The loop.

    def fit(self, train_input, eval_input, config, callbacks=()):
        """Trains the recipe's epochs, evaluating after each; resumes if saved.

        Writes into `options.run_dir` (on the chief; other workers of a
        multi-worker run write the same files into
        `run_dir/workers/<task>_<index>/`) the files that `run_config`
        describes, each atomically, holding the folder's lock. A run folder
        with a backup is resumed, after checking that `config` matches its
        config.json; one whose recipe is done is left as it is.

        Args:
            train_input: `dataset_fn(input_context)` of endless training
                batches of (images, int labels). An attribute `skipped`
                (`image_data.SkippedImages`), where present, reports the
                images the pipeline skipped.
            eval_input: `dataset_fn(input_context)` of one pass over the
                validation set; may have `skipped` too.
            config: the run's `run_config.RunConfig`.
            callbacks: `keras.callbacks.Callback`s, called with the model at
                the start and end of training and of every epoch, and around
                every call of the compiled loop (`steps_per_loop` steps; the
                batch index is the step in the epoch). Setting
                `model.stop_training = True` ends training after the epoch.

        Returns:
            The dict written to metrics.json (the stored one, for a run
            already complete).

        Raises:
            InputError: the run folder is not one (or is in use, or damaged),
                or the data yields no batch.
            ResumeMismatchError: the run folder holds a run with other settings.
            NonFiniteLossError: the loss or weights became NaN or infinite.
            RunWriteError: a file could not be written; the previous ones are intact.
            stopping.TrainingStopped: SIGINT or SIGTERM, after a backup.
        """
        folder = run_config.RunFolder(worker_output_dir(self.strategy, self.options.run_dir))
        chief_folder = run_config.RunFolder(self.options.run_dir)
        with ownership.claim(folder.path, self.KIND, force=self.options.force_run_dir,
                             chief_path=chief_folder.path) as claim:
            try:
                return self._fit(claim, folder, chief_folder, train_input, eval_input,
                                 config, callbacks)
            except RunWriteError as error:
                if self._run is None:
                    raise
                raise RunWriteError(self._run.write_error_message(error)) from None

    def _fit(self, claim, folder, chief_folder, train_input, eval_input, config, callbacks):
        self._run = None
        latest = run_config.resumable_backup(chief_folder, config, self.options.allow_changes)
        backup = Backup(folder, dict(
            model=self.model, optimizer=self.optimizer, steps_done=self.steps_done,
            seconds=self.seconds,
            **{f"best_{name}": variable for name, variable in self.best.items()},
        ))
        if latest:
            # Every worker resumes from the chief's backup.
            backup.restore(latest, self.options.run_dir)
        # Arguments, data and backup are checked: clear what killed writers
        # left, then write.
        claim.remove_temporaries()
        run_config.write_config(folder.path, config)
        self._started, self._seconds_before = time.time(), float(self.seconds.numpy())
        with writing(folder.log):
            log = RunLog(folder, self.position, self.options.verbose, model=self.model)
        skipped = {"train": getattr(train_input, "skipped", None),
                   "eval": getattr(eval_input, "skipped", None)}
        self._run = RunState(folder, backup, log, skipped,
                             keras.callbacks.CallbackList(list(callbacks), model=self.model),
                             self.steps_per_epoch, self.position, self.options.verbose)
        complete = int(self.steps_done.numpy()) >= self.recipe.epochs * self.steps_per_epoch
        stored = read_metrics(folder.metrics) if complete else None
        log.record("start", resumed=bool(latest), complete=stored is not None,
                   steps_per_epoch=self.steps_per_epoch, epochs=self.recipe.epochs)
        if stored is not None:
            if self.options.verbose:
                self._run.report_complete(self.options.run_dir, self.recipe.epochs, stored)
            return stored
        if latest and self.options.verbose and not complete:
            position = self.position()
            print(f"Resuming {self.options.run_dir} at epoch {position['epoch'] + 1}, step "
                  f"{position['step']} ({position['steps_done']} steps done).", flush=True)
        train_dataset = self.strategy.distribute_datasets_from_function(train_input)
        eval_dataset = self.evaluation_input(eval_input)
        if self.options.autotune:
            self._tune(train_input)
        self.model.stop_training = False
        self._run.callbacks.on_train_begin()
        with StopSignals(where=self._run.stop_position) as signals:
            self._run.signals = signals
            eval_logs = self._train_epochs(iter(train_dataset), eval_dataset)
        metrics = {
            "model": config.model,
            "epochs": self.recipe.epochs,
            "steps_done": int(self.steps_done.numpy()),
            "monitor": self.MONITOR,
            "final": _json_numbers(eval_logs),
            # Epochs counted from 1, as the console counts them.
            "best": _json_numbers({("epoch" if name == "epoch" else f"val_{name}"):
                                   variable.numpy().item() + (name == "epoch")
                                   for name, variable in self.best.items()}),
            "skipped_images": {split: report.summary() for split, report in skipped.items()
                               if report is not None},
            "seconds": round(self._elapsed(), 1),
        }
        self._run.callbacks.on_train_end(eval_logs)
        with writing(folder.metrics):
            files.write_json(folder.metrics, metrics)
        if self.options.verbose:
            print(f"Metrics written to {folder.metrics}", flush=True)
        return metrics

    def _tune(self, train_input):
        """Measures the "auto" PS layers on a real batch before the step is
        traced (`tuning`), logging each layer's choice."""
        choices, seconds = tune_on_first_batch(self.strategy, self.model, train_input)
        if not choices:
            return
        with writing(self._run.folder.log):
            self._run.log.record("autotune", seconds=round(seconds, 1), **choices)
        if self.options.verbose:
            print(describe_tuning(choices, seconds), flush=True)

    def _elapsed(self):
        """Seconds of the run: those of earlier processes (up to their last
        backup) and this one's."""
        return self._seconds_before + time.time() - self._started

    def _train_epochs(self, iterator, eval_dataset):
        run = self._run
        start_epoch, start_step = divmod(int(self.steps_done.numpy()), self.steps_per_epoch)
        eval_logs = None
        for epoch in range(start_epoch, self.recipe.epochs):
            first_step = start_step if epoch == start_epoch else 0
            epoch_started = time.time()
            run.callbacks.on_epoch_begin(epoch)
            train_logs = self._train_epoch(epoch, first_step, iterator)
            eval_logs = self.evaluate(eval_dataset)
            self._run.report_skipped()
            if "loss" in eval_logs:
                self._check_finite(eval_logs["loss"], "validation loss")
            if eval_logs[self.MONITOR] > self.best[self.MONITOR].numpy():
                self.best["epoch"].assign(epoch)
                for name, value in eval_logs.items():
                    self.best[name].assign(value)
                self._save_best(run.folder.best_model)
            with writing(run.folder.log):
                run.log.epoch(epoch, self.steps_per_epoch - first_step, train_logs, eval_logs,
                              time.time() - epoch_started, int(self.steps_done.numpy()),
                              self.learning_rate)
            self._save_backup()
            run.callbacks.on_epoch_end(
                epoch, {**train_logs, **{f"val_{k}": v for k, v in eval_logs.items()}})
            if self.model.stop_training:
                break
            if epoch + 1 < self.recipe.epochs:
                self._stop_if_requested(save=False)  # just saved
        if eval_logs is None:  # restarted after the last epoch
            eval_logs = self.evaluate(eval_dataset)
        return eval_logs

    def _train_epoch(self, epoch, step, iterator):
        run = self._run
        for metric in self.train_metrics:
            metric.reset_state()
        if self.options.verbose:
            print(f"Epoch {epoch + 1}/{self.recipe.epochs}", flush=True)
        progress = Progress(f"epoch {epoch + 1}/{self.recipe.epochs}", self.steps_per_epoch,
                            self.options.verbose, self.options.log_every)
        progress.update(step)
        backup_every = self.options.backup_every
        logs = metric_results(self.train_metrics)
        steps_done = int(self.steps_done.numpy())  # a Python copy: no read per step
        while step < self.steps_per_epoch:
            num_steps = min(
                self.options.steps_per_loop,
                self.steps_per_epoch - step,
                backup_every - steps_done % backup_every,
            )
            run.callbacks.on_train_batch_begin(step)
            try:
                self.train_steps(iterator, tf.constant(num_steps))
            except tf.errors.OutOfRangeError:
                raise self._run.data_ran_out("train") from None
            step += num_steps
            self.steps_done.assign_add(num_steps)
            steps_done += num_steps
            logs = metric_results(self.train_metrics)
            self._check_finite(logs["loss"], "training loss")
            progress.update(step, logs, finished=step == self.steps_per_epoch)
            self._run.report_skipped()
            run.callbacks.on_train_batch_end(step - 1, logs)
            # The end of an epoch saves after its evaluation.
            saved = steps_done % backup_every == 0 and step < self.steps_per_epoch
            if saved:
                self._save_backup()
                with writing(run.folder.log):
                    run.log.record("backup")
            if step < self.steps_per_epoch:
                self._stop_if_requested(save=not saved)
        return logs

    def _stop_if_requested(self, save):
        """Stops (`TrainingStopped`) if SIGINT or SIGTERM came; saves a
        backup first where `save` (not on multi-worker runs, whose saves
        every worker must join)."""
        run = self._run
        signals = getattr(run, "signals", None)
        if signals is None or signals.requested is None:
            return
        if save and not is_multi_worker(self.strategy):
            self._save_backup()
        where = run.stop_position()
        with writing(run.folder.log):
            run.log.record("stopped", reason=f"signal {signals.requested}")
        raise TrainingStopped(signals.requested, **where)

    def _check_finite(self, value, what):
        if not math.isfinite(value):
            raise self._run.non_finite(value, what)

    def _check_finite_weights(self):
        weights = self.model.weights
        # One transfer from the device for every variable.
        finite = tf.stack([tf.reduce_all(tf.math.is_finite(v.value)) for v in weights]).numpy()
        for variable, ok in zip(weights, finite):
            if not ok:
                self._check_finite(float("nan"), f"weight {variable.path}")

    def _save_backup(self):
        self._check_finite_weights()
        self.seconds.assign(self._elapsed())
        self._run.backup.save(self.steps_done)

    def _save_best(self, path):
        """Saves the model to `path` atomically, in float32 whatever the precision."""
        self._check_finite_weights()
        model = self.model
        if self.options.precision != "float32":
            if self._float32_model is None:
                with dtype_policy("float32"):
                    self._float32_model = self.build_model()
            model = self._float32_model
            model.set_weights(self.model.get_weights())
        with writing(path):
            files.save_model(model, path)


def _json_numbers(values):
    """`values` with None for NaN and infinities, which JSON lacks (an
    undefined metric, such as the AP of a size no object has)."""
    return {name: None if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in values.items()}


def _float32(outputs):
    return keras.tree.map_structure(lambda output: tf.cast(output, tf.float32), outputs)
