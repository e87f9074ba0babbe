"""Where a run executes: the `tf.distribute` strategy, precision and XLA."""

import json
import os

import keras
import tensorflow as tf

from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.errors import describe_error

STRATEGIES = ("auto", "cpu", "gpu", "multiworker", "tpu")
PRECISIONS = ("auto", "fp32", "mixed_float16", "mixed_bfloat16")
JIT_MODES = ("auto", "on", "off")


def create_strategy(name="auto", tpu=None):
    """Creates a `tf.distribute` strategy by name.

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

    >>> create_strategy("cpu").num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise InputError(f"must be one of {', '.join(STRATEGIES)}; got {name!r}.",
                         argument="strategy")
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
                "gpu: TensorFlow sees no GPU (install the tensorflow[and-cuda] "
                "package on a machine with a CUDA GPU).", argument="strategy",
            )
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise InputError(
                "multiworker needs TF_CONFIG on every worker, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}.', argument="strategy",
            )
        check_tf_config(need_cluster=True)
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


def _tf_config_workers():
    if not os.environ.get("TF_CONFIG"):
        return 0
    check_tf_config()
    cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    return sum(cluster.num_tasks(job) for job in ("chief", "worker") if job in cluster.jobs)


def check_tf_config(need_cluster=False):
    """Raises an `InputError` unless `TF_CONFIG` is a JSON object whose
    "cluster" (needed where `need_cluster`) maps job names to lists of
    "host:port" and whose "task" names one of them (a job and an index)."""
    text = os.environ.get("TF_CONFIG", "")
    example = ('e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text or "{}")
    except ValueError as error:
        raise InputError(f"TF_CONFIG is not valid JSON ({error}): {text[:60]!r}; "
                         f"{example}.") from None
    if not isinstance(config, dict):
        raise InputError(f"TF_CONFIG is not a JSON object: {text[:60]!r}; {example}.")
    cluster = config.get("cluster", {})
    if not isinstance(cluster, dict) or not all(
            isinstance(addresses, list) and all(isinstance(a, str) for a in addresses)
            for addresses in cluster.values()) or (need_cluster and not cluster):
        raise InputError(f"TF_CONFIG has no \"cluster\" of jobs and their addresses; "
                         f"{example}.")
    task = config.get("task")
    if cluster and task is not None:
        kind, index = (task.get("type"), task.get("index")) if isinstance(task, dict) else (0, 0)
        if not (kind in cluster and isinstance(index, int) and not isinstance(index, bool)
                and 0 <= index < len(cluster[kind])):
            raise InputError(f"TF_CONFIG's \"task\" {task!r} is not one of its cluster's; "
                             f"{example}.")


def is_multi_worker(strategy):
    """Whether `strategy` trains on several workers (which save together)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs) > 1


def _tpu_strategy(tpu):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as error:  # the resolver raises whatever its lookup raises
        raise InputError(
            f"no TPU answered at {tpu!r} ({describe_error(error)}). Pass the "
            "TPU's name or grpc:// address, or 'local' on a TPU VM.", argument="tpu",
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
    """The Keras dtype policy for a precision name on a device kind.

    "auto" is mixed_bfloat16 on TPU, mixed_float16 on GPU (with dynamic loss
    scaling) and float32 on CPU, where the mixed policies run but gain nothing.

    >>> resolve_precision("auto", "tpu")
    'mixed_bfloat16'
    """
    if precision not in PRECISIONS:
        raise InputError(f"must be one of {', '.join(PRECISIONS)}; got {precision!r}.",
                         argument="precision")
    if precision == "auto":
        return {"tpu": "mixed_bfloat16", "gpu": "mixed_float16"}.get(kind, "float32")
    return "float32" if precision == "fp32" else precision


def resolve_jit_compile(jit_compile, kind):
    """Whether to XLA-compile the step, for a mode name on a device kind.

    "auto" compiles on GPU and TPU, not on CPU: on a 2-core CPU (TF 2.21) a
    ps_cifar_resnet20 training step (batch 64, 32 x 32) took 1.66 s with
    XLA against 0.64 s without, ps_resnet50 (batch 8, 112 x 112) 2.60 s
    against 0.94 s, and the standard twins 0.59 s vs 0.33 s and 1.53 s vs
    0.81 s: XLA's CPU convolutions are slower than oneDNN's.
    """
    if jit_compile not in JIT_MODES:
        raise InputError(f"must be one of {', '.join(JIT_MODES)}; got {jit_compile!r}.",
                         argument="jit_compile")
    if jit_compile == "auto":
        return kind in ("gpu", "tpu")
    return jit_compile == "on"


class dtype_policy:
    """Sets the global Keras dtype policy inside a `with` block."""

    def __init__(self, policy):
        self.policy = policy

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)

    def __exit__(self, *exc_info):
        keras.config.set_dtype_policy(self.previous)


def is_chief(strategy):
    """Whether this process writes the run folder itself (see `worker_output_dir`)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    jobs = resolver.cluster_spec().jobs
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in jobs)


def worker_output_dir(strategy, run_dir):
    """run_dir on the chief; a folder of its own inside it on other workers.

    Every worker saves (saving may involve collective ops), so non-chief
    workers write their copies where they clobber nothing.
    """
    if is_chief(strategy):
        return run_dir
    resolver = strategy.cluster_resolver
    return os.path.join(run_dir, "workers", f"{resolver.task_type}_{resolver.task_id}")
