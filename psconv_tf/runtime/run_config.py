"""The run contract: what a run folder holds, and its typed `config.json`.

One module writes and reads every run folder file name and the run's
configuration; training, resuming, replaying (`--config`) and export all go
through it.

A run folder holds:
- `psconv_run.json`: the manifest (`ownership`): a classification run
  folder, and the entries below;
- `config.json`: a `RunConfig`, everything that defines the run;
- `best.keras`: the model (float32) of the best validation top-1;
- `backup/`: the latest training state, which a restarted run resumes from;
- `log.jsonl`: one JSON record per start, epoch, backup and skipped image;
- `logs/`: TensorBoard scalars;
- `metrics.json`: the final and best validation metrics (epochs counted
  from 1), skipped images, time;
- `workers/`: the copies of the other workers of a multi-worker run;
- `psconv_run.lock`, while a run writes it (`run_lock`).
A folder without manifest written by an earlier release is recognised by
its config.json (a `RunConfig`) or its `backup/checkpoint`.

>>> from psconv_tf.training import configs
>>> config = RunConfig(model="cifar_resnet20", num_classes=10, image_size=32,
...                    channels=3, recipe=configs.CIFAR, dataset="cifar10",
...                    preprocessing=Preprocessing(mean=(125.3, 123.0, 113.9),
...                                                std=(63.0, 62.1, 66.7)))
>>> RunConfig.from_dict(config.to_dict()) == config
True
>>> changed = dataclasses.replace(config, recipe=dataclasses.replace(configs.CIFAR, epochs=400))
>>> config.differences(changed)
[('recipe.epochs', 300, 400)]
"""

import dataclasses
import json
import os
from typing import Optional

import tensorflow as tf

from psconv_tf.runtime import files
from psconv_tf.runtime import ownership
from psconv_tf.runtime.recipe import Recipe
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import ResumeMismatchError
from psconv_tf.runtime.errors import os_error_text
from psconv_tf.runtime.tensorflow_logs import quiet_tensorflow

CONFIG_FILE = "config.json"
BEST_MODEL_FILE = "best.keras"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "logs"
WORKERS_DIR = "workers"
# Fields that may differ when a run resumes: they change how it executes,
# not what it learns.
EXECUTION_FIELDS = ("jit_compile", "replicas", "arguments")
# Fields that a resumed run may change when asked to explicitly: the run
# goes on from where it is, with the new value.
SAFE_CHANGES = ("recipe.epochs", "recipe.decay_epochs", "dataset")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs: (pixels - mean) / std per channel.

    Attributes:
        mean, std: per channel, for pixel values in [0, 255].
        resize_shorter_side, center_crop: evaluation of ImageNet-style
            images (shorter side resized, then the central square), or None.
    """

    mean: tuple
    std: tuple
    resize_shorter_side: Optional[int] = None
    center_crop: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != len(self.std) or not all(v > 0 for v in self.std):
            raise ValueError(
                "`mean` and `std` must have one value per channel, `std` positive. "
                f"Received: mean={self.mean}, std={self.std}"
            )

    def unit_statistics(self):
        """(mean, std) for pixel values in [0, 1], as export takes them."""
        return (tuple(v / 255.0 for v in self.mean), tuple(v / 255.0 for v in self.std))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run, saved as its config.json.

    Attributes:
        model: zoo name (`psconv_tf.models.list_models()`).
        num_classes: classifier outputs.
        image_size: side of the square training and evaluation images.
        channels: image channels.
        recipe: the optimization `configs.Recipe`.
        dataset: the data set's name or folder.
        preprocessing: `Preprocessing`.
        model_kwargs: further arguments of `psconv_tf.models.get` (pattern,
            cyclic, ...), besides num_classes and input_shape.
        class_names: class names by label, where known.
        train_examples: training images, where a subset or known.
        steps_per_epoch: optimizer steps per epoch, where fixed up front.
        seed: seed of the initialization and the augmentation.
        precision: Keras dtype policy.
        jit_compile: XLA compilation of the step.
        replicas: replicas in sync.
        script: the command that wrote it (e.g. "imagenet"), for replays.
        arguments: that command's arguments, for replays (`--config`).
        extras: task-specific entries (JSON values).
    """

    model: str
    num_classes: int
    image_size: int
    channels: int
    recipe: Recipe
    dataset: str
    preprocessing: Preprocessing
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    class_names: tuple = ()
    train_examples: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    seed: int = 0
    precision: str = "float32"
    jit_compile: bool = False
    replicas: int = 1
    script: Optional[str] = None
    arguments: dict = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)

    def model_arguments(self):
        """Keyword arguments of `psconv_tf.models.get` for this run's model."""
        return dict(self.model_kwargs, num_classes=self.num_classes,
                    input_shape=[self.image_size, self.image_size, self.channels])

    def to_dict(self):
        """A JSON-serializable dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data):
        """The inverse of `to_dict`; raises `ValueError` naming a bad entry."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown entries {unknown}")
        missing = sorted(field.name for field in dataclasses.fields(cls)
                         if field.name not in data
                         and field.default is dataclasses.MISSING
                         and field.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"missing entries {missing}")
        values = dict(data)
        try:
            recipe = dict(values["recipe"])
            recipe["decay_epochs"] = tuple(recipe.get("decay_epochs", ()))
            values["recipe"] = Recipe(**recipe)
            values["preprocessing"] = Preprocessing(**values["preprocessing"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"bad recipe or preprocessing: {error}") from None
        values["class_names"] = tuple(values.get("class_names") or ())
        return cls(**values)

    def differences(self, other):
        """[(field, self's value, other's value)] of the fields that differ,
        dotted into the recipe and preprocessing, execution fields left out."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        return [(name, mine.get(name), theirs.get(name))
                for name in sorted(set(mine) | set(theirs))
                if name.split(".")[0] not in EXECUTION_FIELDS
                and mine.get(name) != theirs.get(name)]


def _flatten(data, prefix=""):
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in ("recipe", "preprocessing", "model_kwargs", "extras"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def start_over_advice(backup_dir):
    """How to go on from a damaged backup."""
    return (f"move {backup_dir} away to start the run over (the other files of the run "
            "stay), or use another run folder")


class RunFolder:
    """The paths of a run folder's files (see the module's docstring).

    >>> RunFolder("runs/x").best_model
    'runs/x/best.keras'
    """

    def __init__(self, path):
        self.path = os.fspath(path)

    def _join(self, name):
        return os.path.join(self.path, name)

    config = property(lambda self: self._join(CONFIG_FILE))
    best_model = property(lambda self: self._join(BEST_MODEL_FILE))
    metrics = property(lambda self: self._join(METRICS_FILE))
    log = property(lambda self: self._join(LOG_FILE))
    backup = property(lambda self: self._join(BACKUP_DIR))
    tensorboard = property(lambda self: self._join(TENSORBOARD_DIR))

    def has_backup(self):
        return self.latest_backup() is not None

    def latest_backup(self):
        """The prefix of the latest backup (`backup/ckpt-N`), or None.

        Raises:
            InputError: (argument "run_dir") backup/ is damaged: its
                `checkpoint` file is unreadable or names missing files, or
                it is missing beside checkpoints. Never started over silently.
        """
        if not tf.io.gfile.isdir(self.backup):
            return None
        state_file = os.path.join(self.backup, "checkpoint")
        how = start_over_advice(self.backup)
        if not tf.io.gfile.exists(state_file):
            if tf.io.gfile.glob(os.path.join(self.backup, "ckpt-*.index")):
                raise InputError(f"{self.backup} holds checkpoints but no `checkpoint` file "
                                 f"naming the latest; {how}.", argument="run_dir")
            return None
        with quiet_tensorflow():  # it warns "Checkpoint ignored" and returns None
            state = tf.train.get_checkpoint_state(self.backup)
        if state is None or not state.model_checkpoint_path:
            raise InputError(f"{state_file} is damaged; {how}.", argument="run_dir")
        prefix = state.model_checkpoint_path
        if not tf.io.gfile.exists(prefix + ".index"):
            raise InputError(f"{state_file} names {prefix}, whose files are missing; {how}.",
                             argument="run_dir")
        return prefix


def _written_by_earlier_release(path):
    """A classification run folder without manifest: its backup or its config.json."""
    folder = RunFolder(path)
    if tf.io.gfile.exists(os.path.join(folder.backup, "checkpoint")):
        return True
    try:
        read_config_file(folder.config)
        return True
    except InputError:
        return False


# The run folder of a classification run (see `ownership`).
KIND = ownership.Kind(
    "classification",
    entries=(CONFIG_FILE, BEST_MODEL_FILE, METRICS_FILE, LOG_FILE, BACKUP_DIR,
             TENSORBOARD_DIR, WORKERS_DIR),
    owned_folders=(BACKUP_DIR,),
    evidence=_written_by_earlier_release,
    peers=WORKERS_DIR,
)


def write_config(run_dir, config):
    """Writes `config` as RUN_DIR/config.json, atomically.

    Raises:
        InputError: (argument "run_dir") it cannot be written.
    """
    try:
        files.write_json(RunFolder(run_dir).config, config.to_dict())
    except (OSError, tf.errors.OpError) as error:
        raise InputError(f"cannot write to {run_dir} ({os_error_text(error)}).",
                         argument="run_dir") from None


def read_config_file(path):
    """The `RunConfig` in a config.json file.

    Raises:
        InputError: (argument "config") naming the file when it is missing,
            not JSON, or not a run configuration.
    """
    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        raise InputError(f"no file {path}.", argument="config")
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            data = json.loads(file.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}).", argument="config") from None
    except tf.errors.OpError as error:
        raise InputError(f"cannot read {path} ({error.message}).", argument="config") from None
    try:
        return RunConfig.from_dict(data)
    except ValueError as error:
        raise InputError(f"{path} is not a run configuration: {error}.",
                         argument="config") from None


def read_config(run_dir):
    """The `RunConfig` of a run folder, or None if it has no config.json."""
    path = RunFolder(run_dir).config
    if not tf.io.gfile.exists(path):
        return None
    return read_config_file(path)


def resumable_backup(folder, config, allow_changes=False):
    """The backup a run of `config` resumes from, after checking that the
    folder holds the same run; None where there is no backup.

    Args:
        folder: the `RunFolder` whose backup the run resumes from (the
            chief's, on every worker).
        config: the `RunConfig` of the run to start or resume.
        allow_changes: accept differences in `SAFE_CHANGES`.

    Raises:
        InputError: the backup or config.json is damaged.
        ResumeMismatchError: a backup exists, with other settings.
    """
    latest = folder.latest_backup()
    if latest is None:
        return None
    try:
        stored = read_config(folder.path)
    except InputError as error:
        raise InputError(str(error), argument="run_dir") from None
    if stored is not None:
        _check_resumable(stored, config, folder.path, allow_changes)
    return latest


def _check_resumable(stored, config, run_dir, allow_changes):
    differences = stored.differences(config)
    refused = [difference for difference in differences
               if not (allow_changes and difference[0] in SAFE_CHANGES)]
    if not refused:
        return
    listing = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in refused)
    raise ResumeMismatchError(
        f"{run_dir} holds a run with other settings (stored -> given): {listing}.",
        run_dir, refused,
    )
