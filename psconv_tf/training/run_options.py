"""`RunOptions`: how a run executes, as opposed to what it learns."""

import dataclasses

from psconv_tf.runtime.errors import InputError


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run executes (not what it learns).

    Attributes:
        run_dir: folder of the run's files (see `run_config`).
        precision: Keras dtype policy: "float32", "mixed_float16" or
            "mixed_bfloat16".
        jit_compile: XLA-compile each replica's forward and backward pass.
        backup_every: save the training state every this many steps (and at
            the end of every epoch).
        steps_per_loop: steps run by one call of the compiled loop (raise it
            on TPUs to keep the host out of the way).
        verbose: 0 silent, 1 progress (a bar on a terminal, else a plain
            line every `log_every` steps), 2 one line per epoch.
        log_every: steps between plain progress lines.
        allow_changes: resume even where the fields of
            `run_config.SAFE_CHANGES` differ from the stored config.json.
        force_run_dir: use a `run_dir` that holds other files and no run
            (`ownership.claim`'s `force`).
        autotune: measure every "auto" PS layer on the first real batch
            before the training step is traced (`tuning`); off, the layers
            run the fixed defaults (as they do with PSCONV_TF_AUTOTUNE=0).
    """

    run_dir: str
    precision: str = "float32"
    jit_compile: bool = False
    backup_every: int = 1000
    steps_per_loop: int = 1
    verbose: int = 1
    log_every: int = 100
    allow_changes: bool = False
    force_run_dir: bool = False
    autotune: bool = True

    def config_fields(self, strategy):
        """What a run's config.json records of how it executes under
        `strategy`: the `RunConfig` fields precision, jit_compile, replicas."""
        return dict(precision=self.precision, jit_compile=self.jit_compile,
                    replicas=strategy.num_replicas_in_sync)

    def __post_init__(self):
        for name in ("backup_every", "steps_per_loop", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"must be a positive integer; got {value!r}.", argument=name)
