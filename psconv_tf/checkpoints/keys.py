"""The keys of a PyTorch state dict, sorted by the zoo layer they fill.

The zoo names its layers after torchvision's state-dict keys with "." -> "_"
(`layer2.0.conv2.weight` belongs to the layer `layer2_0_conv2`), and an
official PSConv layer stores three convolutions under one module
(`layer2.0.conv2.gwconv.weight`, `.gwconv_shift.weight`, `.conv.weight`).

Checkpoints wrap these keys: every key may start with the same module names
(DataParallel's `module.`, a Lightning module's `model.`, `torch.compile`'s
`_orig_mod.`, ...), and a detector's backbone is under `backbone.`, beside
its neck and heads. Of the keys as they are, with 1, 2, ... leading names
that all keys share removed, and of each of these the `backbone.` keys
alone, the first that names the most layers is read.

No value is ever dropped for another silently: two keys that end up at the
same weight (`conv1.weight` beside `module.conv1.weight`,
`layer1.0.conv1.weight` beside `layer1_0_conv1.weight`) are refused, naming
both.
"""

import collections
import collections.abc
import os
import typing

import numpy as np

from psconv_tf.checkpoints.official import PSCONV_PARTS

BACKBONE_PREFIX = "backbone."
# Torch float dtypes NumPy has; others (bfloat16, float8) are read as float32.
_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


class KeysByLayer(typing.NamedTuple):
    """A state dict sorted by layer.

    tensors: {layer name: {param: array}}, param e.g. "weight" or
        "gwconv.weight".
    modules: {layer name: its module path in the checkpoint}.
    unexpected: the keys that name no layer.
    """

    tensors: dict
    modules: dict
    unexpected: list


def read_state_dict(source):
    """Arrays by key from a `.pth` path or a mapping (optionally wrapped as
    `{"state_dict": ...}`, as mmcv and Lightning save)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                "Reading a .pth file needs torch: pip install 'psconv-tf[torch]'."
            ) from error
        source = _load_pth(torch, os.fspath(source))
    if not isinstance(source, collections.abc.Mapping):
        raise ValueError(
            "Argument `path_or_state_dict` must be a path or a mapping of keys "
            f"to tensors. Received an object of type {type(source).__name__}."
        )
    if isinstance(source.get("state_dict"), collections.abc.Mapping):
        beside = [key for key, value in source.items() if _is_tensor(value)]
        if beside:
            raise ValueError(
                "The checkpoint holds a 'state_dict' and tensors beside it "
                f"({listing(beside)}): which of them to load is ambiguous."
            )
        source = source["state_dict"]  # mmcv and Lightning checkpoints
    arrays = {}
    for key, value in source.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if value.is_floating_point() and str(value.dtype) not in _NUMPY_FLOATS:
                value = value.float()  # bfloat16 (and float8) have no NumPy dtype
            value = value.numpy()
        arrays[str(key)] = np.asarray(value)
    if not arrays:
        raise ValueError("The checkpoint holds no tensors.")
    return arrays


def _is_tensor(value):
    return hasattr(value, "detach") or isinstance(value, np.ndarray)


def _load_pth(torch, path):
    """`torch.load(path, weights_only=True)`; a bad file is a ValueError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"Checkpoint {path!r} is empty (0 bytes): an interrupted copy?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, ValueError, OSError) as error:
        first_line = str(error).strip().partition("\n")[0] or "truncated"
        raise ValueError(
            f"Checkpoint {path!r} cannot be read as a PyTorch checkpoint "
            f"({type(error).__name__}: {first_line})."
        ) from None
    except Exception as error:
        if type(error).__name__ != "UnpicklingError":
            raise
        first_line = str(error).strip().partition("\n")[0]
        raise ValueError(
            f"Checkpoint {path!r} holds more than tensors and plain containers, "
            f"which weights_only loading refuses ({first_line})."
        ) from None


def unwrapped(arrays, layer_names):
    """`arrays` with the wrapping prefixes removed (see the module doc).

    Raises:
        ValueError: two keys would fill the same weight.
    """
    _refuse_wrapped_twins(arrays, layer_names)
    candidates, stripped = [], arrays
    while True:
        backbone = {
            key[len(BACKBONE_PREFIX) :]: value
            for key, value in stripped.items()
            if key.startswith(BACKBONE_PREFIX)
        }
        candidates += [stripped, backbone]
        heads = {key.partition(".")[0] for key in stripped}
        if len(heads) != 1 or not all("." in key for key in stripped):
            break
        stripped = {key.partition(".")[2]: value for key, value in stripped.items()}
    # The first of the most-named: the keys as they are, unless wrapped.
    return max(candidates, key=lambda candidate: _named(candidate, layer_names))


def _refuse_wrapped_twins(arrays, layer_names):
    """Refuses `p.K` beside `K` where `K` names a layer (`module.conv1.weight`
    and `conv1.weight`): one would overwrite the other."""
    for key in arrays:
        rest = key.partition(".")[2]
        if rest in arrays and _layer_of(rest, layer_names) is not None:
            raise ValueError(
                f"The checkpoint holds both {rest!r} and {key!r}, which fill "
                "the same weight: which one to load is ambiguous. Keep one."
            )


def _named(arrays, layer_names):
    return sum(_layer_of(key, layer_names) is not None for key in arrays)


def _layer_of(key, layer_names):
    """(layer name, param, module path) of a key, or None."""
    module, _, param = key.rpartition(".")
    if module.replace(".", "_") in layer_names:
        return module.replace(".", "_"), param, module
    parent, _, part = module.rpartition(".")
    if part in PSCONV_PARTS and parent.replace(".", "_") in layer_names:
        return parent.replace(".", "_"), f"{part}.{param}", parent
    return None


def keys_by_layer(arrays, layer_names):
    """Sorts the keys by layer: `layer1.0.bn1.running_mean` goes to
    `layer1_0_bn1` as `running_mean`, `layer1.0.conv2.gwconv.weight` to
    `layer1_0_conv2` as `gwconv.weight`.

    Raises:
        ValueError: two keys fill the same param of a layer.
    """
    tensors, sources = collections.defaultdict(dict), {}
    modules, unexpected = {}, []
    for key, value in arrays.items():
        found = _layer_of(key, layer_names)
        if found is None:
            unexpected.append(key)
            continue
        layer, param, module = found
        if param in tensors[layer]:
            raise ValueError(
                f"The checkpoint holds both {sources[layer, param]!r} and {key!r}, "
                f"which fill the same weight ({param} of layer {layer!r}): which "
                "one to load is ambiguous. Keep one."
            )
        tensors[layer][param] = value
        sources[layer, param] = key
        modules[layer] = module
    return KeysByLayer(dict(tensors), modules, unexpected)


def listing(items, shown=12):
    """The first `shown` items, comma-separated, and how many more there are."""
    items = list(items)
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")
