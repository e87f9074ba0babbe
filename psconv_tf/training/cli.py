"""Command-line plumbing shared by the training scripts.

Flags are defined once here; `parse_args` replays a stored run
(`--config RUN/config.json`, explicit flags override) and `run_main` turns
the library's neutral errors into one-line `error: --flag: ...` messages,
and a stop by SIGINT or SIGTERM into one line and the exit status 130 or
143.
"""

import argparse
import dataclasses
import math
import re
import signal
import sys

from psconv_tf.engine import lattice
from psconv_tf import models
from psconv_tf.runtime import run_config
from psconv_tf.training import stopping
from psconv_tf.runtime import strategy as strategies
from psconv_tf.runtime.recipe import OPTIMIZERS
from psconv_tf.runtime.recipe import SCHEDULES
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import NonFiniteLossError
from psconv_tf.runtime.errors import NotARunFolderError
from psconv_tf.runtime.errors import ResumeMismatchError
from psconv_tf.runtime.errors import RunWriteError
from psconv_tf.training.trainer import RunOptions

# Flags that change how a run executes or reports, not what it is: not
# stored for replays.
NOT_REPLAYED = ("config", "verbose", "log_every", "allow_changes", "check_images",
                "force_run_dir", "eval_only", "autotune")
# The defaults of --pattern and --cyclic, for PS models.
DEFAULT_PATTERN = (1, 2, 1, 4)
DEFAULT_CYCLIC = "both"
# Seeds of Python's, NumPy's and TensorFlow's generators: [0, 2**32).
MAX_SEED = 2**32 - 1


# Argument types --------------------------------------------------------------


def finite_float(text):
    """An argparse type: a finite float ("nan", "inf" and "1e999" refused).

    >>> finite_float("0.1")
    0.1
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text):
    """An argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def seed(text):
    """An argparse type: a seed, an integer in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_SEED}], got {text!r}")
    return value


def add_run_dir_arguments(parser, default_run_dir):
    """--run-dir and --force-run-dir."""
    parser.add_argument("--run-dir", default=None,
                        help=f"folder of the run's files; default {default_run_dir}. A "
                             "folder that holds other files and no run is refused")
    parser.add_argument(
        "--force-run-dir", action="store_true",
        help="use a --run-dir that holds files of its own: the run adds its files "
             "among them, refuses if one of its names is taken, and never touches "
             "the others",
    )


def int_list(text):
    """An argparse type: comma-separated integers, e.g. "1,2,1,4"."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"comma-separated integers expected, got {text!r}") from None


def flag(argument):
    """The command-line flag of a library argument name.

    >>> flag("batch_size")
    '--batch-size'
    """
    return "--" + argument.replace("_", "-")


# Shared flags ----------------------------------------------------------------


def add_model_arguments(parser, default_model):
    """--model, --pattern, --cyclic, --mask-lr-multiplier."""
    parser.add_argument(
        "--model", default=default_model, metavar="NAME",
        help=f"zoo model (psconv_tf.models.list_models()); default {default_model}",
    )
    parser.add_argument(
        "--pattern", default=None, type=int_list,
        help="dilation rates of one PSConv cycle, for ps_ models only; default "
             + ",".join(map(str, DEFAULT_PATTERN)),
    )
    parser.add_argument(
        "--cyclic", default=None, choices=("both", "input", "output"),
        help="PSConv rate shift along both channel axes (the paper) or one "
             f"(Table 5 ablations), for ps_ models only; default {DEFAULT_CYCLIC}",
    )
    parser.add_argument(
        "--mask-lr-multiplier", default=None, type=finite_float, metavar="MU",
        help="learning-rate multiplier mu of the dynamic (dps_) models' rate masks "
             "(DynamicPSConv2D's mask_learning_rate_multiplier, in [1e-6, 1e6]); "
             "default 1",
    )


def check_model_name(name, argument="model"):
    """Raises an `InputError` naming the choices unless `name` is a zoo model."""
    if name not in models.list_models():
        raise InputError(
            f"unknown model {name!r}; choose from {', '.join(models.list_models())}.",
            argument=argument,
        )


def model_kwargs_from_args(args, backbone=False):
    """Validated zoo arguments: ps_ models take the pattern and cyclic mode,
    dps_ models the mask's learning-rate multiplier; given for another
    model, each is refused (it would change nothing), as the multiplier is
    for a keras-hub backbone (`backbone`), which does not take it."""
    check_model_name(args.model)
    multiplier = getattr(args, "mask_lr_multiplier", None)
    if multiplier is not None and not args.model.startswith("dps_"):
        raise InputError(f"applies to the dynamic (dps_) models only, not {args.model}.",
                         argument="mask_lr_multiplier")
    if multiplier is not None and backbone:
        raise InputError("the keras-hub backbone (PSResNetBackbone) does not take it; "
                         "train the dps_ classifier with imagenet.py or cifar.py.",
                         argument="mask_lr_multiplier")
    if not args.model.startswith("ps_"):
        for name in ("pattern", "cyclic"):
            if getattr(args, name) is not None:
                raise InputError(f"applies to the PSConv (ps_) models only, not {args.model}.",
                                 argument=name)
        if multiplier is None:
            return {}
        return {"dynamic_options": {"mask_learning_rate_multiplier": multiplier}}
    try:
        pattern = lattice.validate_pattern(
            tuple(DEFAULT_PATTERN if args.pattern is None else args.pattern))
    except (TypeError, ValueError) as error:
        raise InputError(f"{error}", argument="pattern") from None
    return {"pattern": list(pattern), "cyclic": args.cyclic or DEFAULT_CYCLIC}


def add_recipe_arguments(parser, recipe, default_decay=""):
    """Recipe fields as options, defaulting to `recipe`.

    Args:
        parser: an `argparse.ArgumentParser`.
        recipe: the `configs.Recipe` of the defaults.
        default_decay: how the script places the step schedule's drops when
            --decay-epochs is not given (for the help text).
    """
    parser.add_argument("--epochs", type=positive_int, default=recipe.epochs,
                        help=f"training epochs; default {recipe.epochs}")
    parser.add_argument("--batch-size", type=positive_int, default=recipe.batch_size,
                        help=f"global batch, all replicas together; default {recipe.batch_size}")
    parser.add_argument(
        "--learning-rate", type=finite_float, default=recipe.learning_rate,
        help=f"peak learning rate at batch {recipe.reference_batch_size}, "
             f"scaled linearly with --batch-size; default {recipe.learning_rate}",
    )
    parser.add_argument(
        "--optimizer", default=recipe.optimizer, choices=OPTIMIZERS,
        help="sgd (momentum, coupled weight decay: the recipes') or adamw (decoupled "
             f"weight decay, for short runs from scratch); default {recipe.optimizer}",
    )
    parser.add_argument("--momentum", type=finite_float, default=recipe.momentum,
                        help=f"SGD momentum; default {recipe.momentum}")
    parser.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, default=recipe.nesterov,
        help=f"Nesterov momentum; default {'on' if recipe.nesterov else 'off'}",
    )
    parser.add_argument(
        "--weight-decay", type=finite_float, default=recipe.weight_decay,
        help="L2 weight decay added to the gradient of every weight before the "
             "momentum, as torch.optim.SGD(weight_decay=...), not Keras's "
             f"decoupled weight_decay; default {recipe.weight_decay}",
    )
    parser.add_argument(
        "--schedule", default=recipe.schedule, choices=SCHEDULES,
        help="learning-rate schedule: cosine (half cosine to zero after "
             "--warmup-epochs) or step (x --decay-factor at each of "
             f"--decay-epochs); default {recipe.schedule}",
    )
    parser.add_argument("--warmup-epochs", type=finite_float, default=recipe.warmup_epochs,
                        help="linear warm-up before the cosine decay; default "
                             f"{recipe.warmup_epochs:g}")
    parser.add_argument(
        "--decay-epochs", type=int_list, default=None,
        help="comma-separated epochs where the step schedule drops the learning "
             f"rate; default {default_decay}",
    )
    parser.add_argument("--decay-factor", type=finite_float, default=recipe.decay_factor,
                        help=f"the step schedule's factor; default {recipe.decay_factor}")
    parser.add_argument(
        "--warmup-steps", type=int, default=recipe.warmup_steps,
        help="linear warm-up of the step schedule, in optimizer steps, from "
             f"{recipe.warmup_ratio:g} x the peak; default {recipe.warmup_steps}",
    )
    parser.add_argument("--milestones", action=_Renamed, new_flag="--decay-epochs",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


class _Renamed(argparse.Action):
    """A flag of an earlier release, refused with a pointer to its new name."""

    def __init__(self, option_strings, dest, new_flag, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_flag = new_flag

    def __call__(self, parser, namespace, values, option_string=None):
        raise argparse.ArgumentError(self, f"is now {self.new_flag} (same values)")


def recipe_from_args(recipe, args, default_decay_epochs):
    """`recipe` with the values of `add_recipe_arguments`' options.

    Args:
        recipe: the `configs.Recipe` to start from.
        args: parsed arguments.
        default_decay_epochs: `fn(epochs)` giving the step schedule's drops
            when --decay-epochs is not given.
    """
    decay_epochs = args.decay_epochs
    if args.schedule != "step":
        if decay_epochs is not None:
            raise InputError("applies to --schedule step only.", argument="decay_epochs")
        decay_epochs = ()
    elif decay_epochs is None:
        decay_epochs = tuple(default_decay_epochs(args.epochs))
    try:
        return dataclasses.replace(
            recipe, epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.learning_rate, momentum=args.momentum,
            nesterov=args.nesterov, weight_decay=args.weight_decay,
            schedule=args.schedule, warmup_epochs=args.warmup_epochs,
            decay_epochs=tuple(decay_epochs), decay_factor=args.decay_factor,
            warmup_steps=args.warmup_steps, optimizer=args.optimizer,
        )
    except ValueError as error:
        # Recipe names the field at fault in backticks, first.
        field = re.search(r"`(\w+)`", str(error))
        message = re.sub(r"^`\w+` ", "", str(error))
        raise InputError(message, argument=field.group(1) if field else None) from None


def add_runtime_arguments(parser, default_run_dir):
    """Strategy, precision, XLA, run folder, replay and logging options."""
    parser.add_argument(
        "--config", default=None, metavar="CONFIG_JSON",
        help="replay a run: take every setting from a run's config.json "
             "(flags given as well override it)",
    )
    add_run_dir_arguments(parser, default_run_dir)
    parser.add_argument(
        "--allow-changes", action="store_true",
        help="resume a run folder even though --epochs, --decay-epochs or the data "
             "folder differ from its config.json (a run refuses other changes)",
    )
    parser.add_argument(
        "--strategy", default="auto", choices=strategies.STRATEGIES,
        help="tf.distribute strategy: cpu (OneDeviceStrategy), gpu "
             "(MirroredStrategy over the local GPUs), multiworker "
             "(MultiWorkerMirroredStrategy from TF_CONFIG), tpu (TPUStrategy "
             "for --tpu); auto: tpu if --tpu is given, else multiworker if "
             "TF_CONFIG lists several workers, else gpu if any, else cpu; default auto",
    )
    parser.add_argument("--tpu", default=None,
                        help="TPU name or grpc:// address ('local' on a TPU VM)")
    parser.add_argument(
        "--jit-compile", default="auto", choices=strategies.JIT_MODES,
        help="XLA-compile the forward and backward pass; auto: on for GPU and "
             "TPU, off for CPU (measured slower there); default auto",
    )
    parser.add_argument(
        "--autotune", default=True, action=argparse.BooleanOptionalAction,
        help="time every 'auto' PSConv2D's implementations on the first batch "
             "before the training step is compiled, and log the choices; "
             "--no-autotune runs the fixed defaults; default on",
    )
    parser.add_argument(
        "--precision", default="auto", choices=strategies.PRECISIONS,
        help="auto: mixed_bfloat16 on TPU, mixed_float16 (with loss scaling) "
             "on GPU, fp32 on CPU; default auto",
    )
    parser.add_argument(
        "--backup-every", type=positive_int, default=1000, metavar="STEPS",
        help="save the training state every STEPS steps and every epoch; a "
             "run restarted with the same --run-dir resumes from it; default 1000",
    )
    parser.add_argument(
        "--steps-per-loop", type=positive_int, default=1,
        help="steps per call of the compiled training loop (e.g. 100 on TPU); default 1",
    )
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of the initialization and the augmentation, in "
                             f"[0, {MAX_SEED}]; default 0")
    add_verbose_argument(parser)
    parser.add_argument("--log-every", type=positive_int, default=100, metavar="STEPS",
                        help="steps between progress lines when the output is "
                             "not a terminal; default 100")


def add_eval_only_argument(parser):
    """--eval-only: evaluate the run folder's best.keras, needing the
    validation data alone."""
    parser.add_argument(
        "--eval-only", action="store_true",
        help="evaluate the run folder's best.keras on the validation data (the "
             "training data is not needed) and write nothing",
    )


def add_verbose_argument(parser):
    """--verbose, 1 by default in every command."""
    parser.add_argument(
        "--verbose", type=int, default=1, choices=(0, 1, 2),
        help="0 silent, 1 progress (a bar on a terminal, else a plain line "
             "every --log-every steps), 2 one line per epoch; default 1",
    )


def parse_args(parser, argv, script):
    """Parses `argv`; with --config, the stored run's arguments are the defaults.

    Args:
        parser: the script's parser (with `add_runtime_arguments`).
        argv: the arguments, or None for sys.argv.
        script: the script's name, as `RunConfig.script` holds it.
    """
    args = parser.parse_args(argv)
    if args.config is None:
        return args
    stored = run_config.read_config_file(args.config)
    if stored.script != script:
        raise InputError(
            f"{args.config} was written by {stored.script or 'another program'}, "
            f"not by {script}.", argument="config",
        )
    known = {action.dest for action in parser._actions}
    arguments = dict(stored.arguments)
    if not str(arguments.get("model", "")).startswith("ps_"):
        # Earlier releases stored the PS defaults for every model.
        for name, default in (("pattern", list(DEFAULT_PATTERN)), ("cyclic", DEFAULT_CYCLIC)):
            if arguments.get(name) == default:
                arguments[name] = None
    parser.set_defaults(**{name: _from_json(value) for name, value in arguments.items()
                           if name in known and name not in NOT_REPLAYED})
    return parser.parse_args(argv)


def _from_json(value):
    return tuple(value) if isinstance(value, list) else value


def replay_arguments(args):
    """The arguments to store in config.json for replays."""
    return {name: value for name, value in vars(args).items() if name not in NOT_REPLAYED}


def runtime_from_args(args, run_dir):
    """(strategy, RunOptions) from the runtime arguments, for `run_dir`."""
    strategy = strategies.create_strategy(args.strategy, args.tpu)
    kind = strategies.device_kind(strategy)
    options = RunOptions(
        run_dir=run_dir,
        precision=strategies.resolve_precision(args.precision, kind),
        jit_compile=strategies.resolve_jit_compile(args.jit_compile, kind),
        backup_every=args.backup_every,
        steps_per_loop=args.steps_per_loop,
        verbose=args.verbose,
        log_every=args.log_every,
        allow_changes=args.allow_changes,
        force_run_dir=args.force_run_dir,
        autotune=args.autotune,
    )
    return strategy, options


def error_message(error):
    """The one-line message of a library error, naming its flag."""
    if isinstance(error, ResumeMismatchError):
        return (f"error: --run-dir: {error} Resume it with its own settings "
                f"(--config {run_config.RunFolder(error.run_dir).config}), pass "
                "--allow-changes for --epochs or --decay-epochs, or give a new --run-dir.")
    if isinstance(error, NotARunFolderError) and error.forceable:
        return (f"error: --run-dir: {error}, or pass --force-run-dir to add this run's "
                "files among them.")
    if isinstance(error, InputError) and error.argument:
        return f"error: {flag(error.argument)}: {error}"
    return f"error: {error}"


def run_main(main, argv=None, resumable=True):
    """Runs `main(argv)`; a library error exits with a one-line message.

    Bad input (`InputError`), a diverged run (`NonFiniteLossError`) and a
    failed write (`RunWriteError`) exit with status 1 and no traceback;
    SIGINT (Ctrl-C) and SIGTERM print where the run stopped (and, where
    `resumable`, that rerunning the command resumes it) and exit with 128 +
    the signal's number.
    """
    with stopping.raise_on_signals():
        try:
            return main(argv)
        except (InputError, NonFiniteLossError, RunWriteError) as error:
            sys.exit(error_message(error))
        except KeyboardInterrupt as stop:
            if not isinstance(stop, stopping.TrainingStopped):
                stop = stopping.TrainingStopped(signal.SIGINT)
            message = stop.message() if resumable else stop.message().split(";")[0]
            print(message, file=sys.stderr, flush=True)
            sys.exit(stop.exit_status)
