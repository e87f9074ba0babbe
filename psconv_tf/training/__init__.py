"""The paper's training recipes on tf.distribute, as a library (TensorFlow only).

Modules, one job each:
- `configs`: the recipes (`IMAGENET`, `CIFAR`, `QUICK`, `COCO_1X`,
  `SEGMENTATION`) as `Recipe`s (`psconv_tf.runtime.recipe`);
- `optimizer`, `schedules`: `CoupledWeightDecaySGD` (PyTorch's weight
  decay) and the one schedules module: cosine, step, warm-up + step (the
  1x schedule) and the scaling of its milestones;
- `trainer`, `run_options`, `tuning`: `Trainer` and `RunOptions`, the
  resumable loop of every task (its hooks: loss, metrics, evaluation;
  callbacks welcome), which tunes the PS layers before tracing;
- `backup`, `run_state`, `run_log`, `stopping`: its backup/, the run in
  progress, what it reports, and its stop on SIGINT or SIGTERM;
- `cli`: the command-line flags of `training/*.py`.

What every task shares (errors, strategy, statistics, the run folder and
its `config.json`) is in `psconv_tf.runtime`; the classification task
(data, preprocessing, runs) in `psconv_tf.classification`.

>>> from psconv_tf.training import CoupledWeightDecaySGD, configs
>>> configs.IMAGENET.epochs
120
"""

from psconv_tf.training import configs
from psconv_tf.runtime.recipe import Recipe
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import NonFiniteLossError
from psconv_tf.runtime.errors import ResumeMismatchError
from psconv_tf.training.optimizer import CoupledWeightDecaySGD
from psconv_tf.training.optimizer import build_optimizer
from psconv_tf.runtime.run_config import Preprocessing
from psconv_tf.runtime.run_config import RunConfig
from psconv_tf.runtime.run_config import RunFolder
from psconv_tf.training.run_options import RunOptions
from psconv_tf.training.schedules import learning_rate_schedule
from psconv_tf.runtime.strategy import create_strategy
from psconv_tf.training.trainer import Trainer
