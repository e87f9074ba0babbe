"""The paper's training recipes on tf.distribute, as a library (TensorFlow only).

Modules, one job each:
- `configs`: the recipes (`Recipe`, `IMAGENET`, `CIFAR`, `QUICK`, `COCO_1X`);
- `optimizer`, `schedules`: `CoupledWeightDecaySGD` (PyTorch's weight
  decay) and the one schedules module: cosine, step, warm-up + step (the
  1x schedule) and the scaling of its milestones;
- `strategy`: the `tf.distribute` strategy, precision and XLA;
- `preprocessing`, `image_data`, `small_data`: ImageNet-style and
  small-image input pipelines (undecodable images skipped and named);
- `trainer`, `metrics`, `run_options`: `Trainer` and `RunOptions`, the
  resumable loop of every task (its hooks: loss, metrics, evaluation;
  callbacks welcome);
- `backup`, `run_state`, `run_log`, `stopping`: its backup/, the run in
  progress, what it reports, and its stop on SIGINT or SIGTERM;
- `run_config`: the run folder and its typed `config.json` (`RunConfig`),
  and the check that a resumed run is the stored one;
- `ownership`, `run_lock`: which folders are run folders, what a run may
  remove there, and the lock that lets one process write a run folder;
- `classification`: training a zoo model from a `RunConfig`;
- `cli`: the command-line flags of `training/*.py`;
- `errors`: `InputError` and the other errors the library raises.

>>> from psconv_tf.training import CoupledWeightDecaySGD, configs
>>> configs.IMAGENET.epochs
120
"""

from psconv_tf.training import configs
from psconv_tf.training.configs import Recipe
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import NonFiniteLossError
from psconv_tf.runtime.errors import ResumeMismatchError
from psconv_tf.training.optimizer import CoupledWeightDecaySGD
from psconv_tf.training.optimizer import build_optimizer
from psconv_tf.training.run_config import Preprocessing
from psconv_tf.training.run_config import RunConfig
from psconv_tf.training.run_config import RunFolder
from psconv_tf.training.run_options import RunOptions
from psconv_tf.training.schedules import learning_rate_schedule
from psconv_tf.runtime.strategy import create_strategy
from psconv_tf.training.trainer import Trainer
