"""PyTorch checkpoints (torchvision layout, official PSConv layers) for the zoo.

The zoo names its layers after torchvision's state-dict keys with "." -> "_"
(`layer2.0.conv2.weight` belongs to the layer `layer2_0_conv2`), so a
checkpoint maps one to one. The official PSConv layers (`PSConv2d` and the
grouped `PSGConv2d` of d-li14/PSConv) hold three convolutions, stored as
`conv2.gwconv.weight` (a grouped conv at rate d), `conv2.gwconv_shift.weight`
(a grouped conv at rate 2d over the input with its channel halves swapped,
per group) and `conv2.conv.weight` (a dense rate-1 conv, masked to zero where
the other two act). Together they are one `PSConv2D(pattern=(1, d, 1, 2d))`
with the blocked layout: `load_torch` writes them into its kernel.
"""

import collections.abc
import os

import keras
import numpy as np

from psconv_tf.ps_conv2d import PSConv2D

MASKED_MODES = ("error", "compat", "zero")
PSCONV_PARTS = ("gwconv", "gwconv_shift", "conv")
# Checkpoint params with no Keras counterpart.
IGNORED_PARAMS = ("num_batches_tracked",)
# PyTorch (out, in/groups, kh, kw) -> Keras (kh, kw, in/groups, out).
TORCH_TO_KERAS_CONV = (2, 3, 1, 0)
KERAS_TO_TORCH_CONV = (3, 2, 0, 1)
# Prefixes of DataParallel (`module.`) and of detector checkpoints.
DATA_PARALLEL_PREFIX = "module."
BACKBONE_PREFIX = "backbone."
# Torch float dtypes NumPy has; others (bfloat16, float8) are read as float32.
_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")
_LISTED_KEYS = 12


def load_torch(model, path_or_state_dict, strict=True, masked="error", dilation=2):
    """Loads a PyTorch ResNet / ResNeXt checkpoint into a zoo model.

    Works for the official PS-ResNet-50/101 and PS-ResNeXt-101 (32x4d)
    ImageNet weights into `ps_resnet50`, `ps_resnet101` and
    `ps_resnext101_32x4d`, and for standard torchvision checkpoints into the
    standard twins. Keys may carry DataParallel's `module.` prefix; from a
    detector checkpoint (keys `backbone.*`) only the backbone is read (build
    the model with `include_top=False`). BatchNorm running statistics are
    loaded; `num_batches_tracked` has no Keras counterpart and is ignored.

    In an official PSConv layer, the dense rate-1 conv `conv.weight` is
    meant to be zero where `gwconv` and `gwconv_shift` act (the masked
    positions). Where it is not (mmdet re-initializes the weights after the
    mask is applied and the gradient hook then keeps those values; the
    official `PSGConv2d` masks only some of its groups), the official layer
    adds a rate-1 term there that no PSConv has. `masked` decides:

    - `"error"` (default): raise, naming every such layer with the number and
      the largest magnitude of its nonzero masked weights.
    - `"compat"`: reproduce the official forward pass. `model` receives the
      PSConv weights as with `"zero"`, and the function returns a new model
      that shares all of `model`'s layers and adds, in parallel to each
      affected PSConv layer `L`, the rate-1 conv of its masked weights:
      `ZeroPadding2D` `L_masked_pad`, `Conv2D` `L_masked` (the layer's groups,
      PyTorch padding) and `Add` `L_compat`. Only standard layers are added,
      so the model saves to `.keras` and loads back like any other. The
      correction is a full (grouped) 3x3 conv, so each affected layer costs
      about twice as much. Without affected layers, `model` is returned.
    - `"zero"`: drop the masked weights, keeping the pure PSConv.

    Args:
        model: a functional zoo model (`psconv_tf.models.get(...)`).
        path_or_state_dict: path of a `.pth` file (read with
            `torch.load(weights_only=True)`, which never unpickles code; needs
            torch, the `torch` extra), or a mapping of keys to tensors or
            arrays, optionally wrapped as `{"state_dict": ...}`.
        strict: if True, every checkpoint key must belong to a layer and
            every weighted layer must find its keys. If False, keys without a
            layer are ignored and layers missing keys keep their weights.
            Shape mismatches raise either way.
        masked: `"error"`, `"compat"` or `"zero"`, see above.
        dilation: the `dilation` of the official layers: `gwconv` runs at
            this rate, `gwconv_shift` at twice it (2 in the published models,
            which the zoo's default pattern (1, 2, 1, 4) matches).

    Returns:
        `model`, or the compat model for `masked="compat"` (see above).

    Raises:
        ValueError: for missing or unexpected keys (with `strict`), a shape
            mismatch, a PSConv layer whose rates or padding differ from the
            official layer's, or nonzero masked weights with `masked="error"`.

    Example:

    ```python
    model = psconv_tf.models.get("ps_resnet50")
    model = load_torch(model, "ps_resnet50.pth", masked="compat")
    ```
    """
    if masked not in MASKED_MODES:
        raise ValueError(
            f"Argument `masked` must be one of {MASKED_MODES}. "
            f"Received: masked={masked!r}"
        )
    if not isinstance(strict, bool):
        raise ValueError(
            f"Argument `strict` must be True or False. Received: strict={strict!r}"
        )
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation <= 0:
        raise ValueError(
            "Argument `dilation` must be a positive integer. "
            f"Received: dilation={dilation!r}"
        )
    state_dict = _read_state_dict(path_or_state_dict)
    layers = [layer for layer in model.layers if layer.weights]
    tensors, modules, unexpected, clashes = _assign_keys_to_layers(layers, state_dict)

    missing, complete = [], []
    for layer in layers:
        expected = _expected_params(layer, strict)
        if expected is None:
            continue  # an unsupported layer, tolerated when not strict
        module = modules.get(layer.name, layer.name.replace("_", "."))
        found = tensors.get(layer.name, {})
        missing += [f"{module}.{p}" for p in expected if p not in found]
        unexpected += [
            f"{module}.{p}" for p in found if p not in expected and p not in IGNORED_PARAMS
        ]
        if all(p in found for p in expected):
            complete.append(layer)
    if strict and (missing or unexpected):
        raise ValueError(_key_mismatch_message(missing, unexpected, clashes))

    assignments, residuals = [], {}
    for layer in complete:
        params, module = tensors[layer.name], modules[layer.name]
        if isinstance(layer, PSConv2D):
            values, residual = _psconv_values(layer, params, module, dilation)
            if np.any(residual):
                residuals[layer.name] = residual
        else:
            values = _plain_values(layer, params, module)
        assignments += values
    if residuals and masked == "error":
        raise ValueError(_masked_message(residuals, tensors, modules))
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    if residuals and masked == "compat":
        return _with_masked_corrections(model, residuals)
    return model


def _read_state_dict(source):
    """Numpy arrays by key, prefixes of DataParallel and detectors removed."""
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
        source = source["state_dict"]  # mmcv and Lightning checkpoints
    arrays = {}
    for key, value in source.items():
        key = key.removeprefix(DATA_PARALLEL_PREFIX)
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if value.is_floating_point() and str(value.dtype) not in _NUMPY_FLOATS:
                value = value.float()  # bfloat16 (and float8) have no NumPy dtype
            value = value.numpy()
        arrays[key] = np.asarray(value)
    if any(key.startswith(BACKBONE_PREFIX) for key in arrays):
        arrays = {
            key.removeprefix(BACKBONE_PREFIX): value
            for key, value in arrays.items()
            if key.startswith(BACKBONE_PREFIX)
        }
    return arrays


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


def _assign_keys_to_layers(layers, state_dict):
    """Sorts the keys by Keras layer.

    `layer1.0.bn1.running_mean` goes to `layer1_0_bn1` as `running_mean`;
    `layer1.0.conv2.gwconv.weight` to the PSConv2D `layer1_0_conv2` as
    `gwconv.weight`.

    Returns:
        tensors: {layer name: {param: array}}.
        modules: {layer name: its module path in the checkpoint}.
        unexpected: the keys without a layer.
        clashes: the layers whose conv type (PSConv or standard) differs
            between checkpoint and model.
    """
    by_name = {layer.name: layer for layer in layers}
    tensors, modules = collections.defaultdict(dict), {}
    unexpected, clashes = [], set()
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        parent, _, part = module.rpartition(".")
        layer = by_name.get(module.replace(".", "_"))
        owner = by_name.get(parent.replace(".", "_"))
        if layer is not None:
            tensors[layer.name][param] = value
            modules[layer.name] = module
            if isinstance(layer, PSConv2D):
                clashes.add(f"{layer.name} (checkpoint: standard conv, model: PSConv2D)")
        elif owner is not None and part in PSCONV_PARTS:
            tensors[owner.name][f"{part}.{param}"] = value
            modules[owner.name] = parent
            if not isinstance(owner, PSConv2D):
                clashes.add(
                    f"{owner.name} (checkpoint: PSConv, model: {type(owner).__name__})"
                )
        else:
            unexpected.append(key)
    return tensors, modules, unexpected, sorted(clashes)


def _expected_params(layer, strict):
    """The checkpoint params `layer` needs, or None for an unsupported layer."""
    if isinstance(layer, PSConv2D):
        names = ("weight", "bias") if layer.use_bias else ("weight",)
        return [f"{part}.{name}" for part in PSCONV_PARTS for name in names]
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return ["weight", "bias"] if layer.use_bias else ["weight"]
    if isinstance(layer, keras.layers.BatchNormalization):
        affine = (["weight"] if layer.scale else []) + (["bias"] if layer.center else [])
        return affine + ["running_mean", "running_var"]
    if strict:
        raise ValueError(
            f"Layer {layer.name!r} of type {type(layer).__name__} has weights but "
            "no PyTorch counterpart known to `load_torch` (Conv2D, PSConv2D, "
            "Dense, BatchNormalization). Pass strict=False to leave it as is."
        )
    return None


def _plain_values(layer, params, module):
    """(variable, value) pairs of a Conv2D, Dense or BatchNormalization."""
    if isinstance(layer, keras.layers.BatchNormalization):
        pairs = [
            (layer.gamma, "weight"), (layer.beta, "bias"),
            (layer.moving_mean, "running_mean"),
            (layer.moving_variance, "running_var"),
        ]
        return [
            (variable, _checked(layer, module, name, params[name], variable.shape))
            for variable, name in pairs
            if variable is not None
        ]
    if isinstance(layer, keras.layers.Dense):
        torch_shape = tuple(layer.kernel.shape)[::-1]
        kernel = _checked(layer, module, "weight", params["weight"], torch_shape).T
    else:
        torch_shape = _permuted(layer.kernel.shape, KERAS_TO_TORCH_CONV)
        kernel = _checked(layer, module, "weight", params["weight"], torch_shape)
        kernel = kernel.transpose(TORCH_TO_KERAS_CONV)
    values = [(layer.kernel, kernel)]
    if layer.use_bias:
        bias = _checked(layer, module, "bias", params["bias"], layer.bias.shape)
        values.append((layer.bias, bias))
    return values


def _checked(layer, module, param, value, torch_shape):
    """`value`, after checking that it has the shape the layer needs."""
    if tuple(value.shape) != tuple(torch_shape):
        raise ValueError(
            f"Shape mismatch for '{module}.{param}': the checkpoint has "
            f"{tuple(value.shape)}, layer {layer.name!r} needs "
            f"{tuple(torch_shape)} (PyTorch layout)."
        )
    return value


def _psconv_values(layer, params, module, dilation):
    """The PSConv2D kernel (and bias) of an official layer, and its residual.

    The residual holds the dense conv's weights at the masked positions, as a
    Keras kernel of the layer's shape (zeros elsewhere).
    """
    if layer.activation is not keras.activations.linear:
        raise ValueError(
            f"Layer {layer.name!r} has an activation; the official layer has none."
        )
    if layer.padding != "symmetric" and (layer.padding, layer.strides) != ("same", (1, 1)):
        raise ValueError(
            f"Layer {layer.name!r} has padding={layer.padding!r}; the official "
            "layer pads as PyTorch does, which is padding='symmetric'."
        )
    parts = len(layer.pattern)
    if parts % 2:
        raise ValueError(
            f"Layer {layer.name!r}: the official layer swaps channel halves, "
            f"which needs an even number of parts; its pattern {layer.pattern} "
            f"has {parts}."
        )
    filters, groups = layer.filters, layer.groups
    in_channels = layer.kernel.shape[2] * groups
    kernel_size = tuple(layer.kernel_size)
    block_shape = (filters, in_channels // (groups * parts)) + kernel_size
    shapes = {
        "gwconv.weight": block_shape,
        "gwconv_shift.weight": block_shape,
        "conv.weight": (filters, in_channels // groups) + kernel_size,
    }
    for name, shape in shapes.items():
        _checked(layer, module, name, params[name], shape)
    dense, rates, masked = official_dense_kernel(params, groups, parts, dilation)
    if not np.array_equal(rates, layer.dilation_matrix()):
        raise ValueError(
            f"Layer {layer.name!r} has other rates than the official layer "
            f"(dilation={dilation}, {parts} parts), which is "
            f"PSConv2D(pattern=(1, {dilation}, 1, {2 * dilation}), "
            "layout='blocked', cyclic='both'). Received: pattern="
            f"{layer.pattern}, layout={layer.layout!r}, cyclic={layer.cyclic!r}, "
            f"dilation_rate={layer.dilation_rate}."
        )
    residual = np.where(masked[:, :, None, None], params["conv.weight"], 0)
    values = [(layer.kernel, _grouped(dense.transpose(TORCH_TO_KERAS_CONV), groups))]
    if layer.use_bias:
        bias = sum(params[f"{part}.bias"] for part in PSCONV_PARTS)
        values.append((layer.bias, bias))
    return values, residual.transpose(TORCH_TO_KERAS_CONV)


def official_dense_kernel(params, groups=1, parts=4, dilation=2):
    """The official layer as one kernel with a rate per (filter, input).

    Args:
        params: arrays of `gwconv.weight`, `gwconv_shift.weight` and
            `conv.weight` of an official PSConv2d (groups=1) or PSGConv2d
            layer, in PyTorch layout.
        groups: the layer's groups (PSGConv2d's cardinality).
        parts: the layer's parts (even).
        dilation: the rate of `gwconv`.

    Returns:
        dense: (filters, in_channels, kh, kw), every kernel at its place:
            `gwconv` and `gwconv_shift` at their positions, `conv` elsewhere.
        rates: (filters, in_channels) int, the rate of every kernel, 0 across
            groups, comparable with `PSConv2D.dilation_matrix()`.
        masked: (filters, in_channels // groups) bool, the positions of `conv`
            where the other two act, in the layout of `conv.weight`.
    """
    filters, in_per_group = params["conv.weight"].shape[:2]
    in_channels = in_per_group * groups
    blocks = groups * parts
    # gwconv_shift reads channel swapped[j] = x[halves_swapped[j]].
    halves = np.arange(in_channels).reshape(groups, 2, -1)
    halves_swapped = halves[:, ::-1].ravel()
    diagonal = _expand_groups(np.ones((filters, in_channels // blocks), bool), blocks)
    shifted = np.zeros_like(diagonal)
    shifted[:, halves_swapped] = diagonal
    gw = _expand_groups(params["gwconv.weight"], blocks)
    gw_shift = np.zeros_like(gw)
    gw_shift[:, halves_swapped] = _expand_groups(params["gwconv_shift.weight"], blocks)
    conv = _expand_groups(params["conv.weight"], groups)
    same_group = _expand_groups(np.ones((filters, in_channels // groups), bool), groups)

    dense = np.where(
        diagonal[..., None, None], gw, np.where(shifted[..., None, None], gw_shift, conv)
    )
    rates = np.where(diagonal, dilation, np.where(shifted, 2 * dilation, same_group))
    masked = _grouped((diagonal | shifted).T, groups).T
    return dense, rates.astype(np.int64), masked


def _expand_groups(weight, groups):
    """(out, in/groups, ...) grouped weights -> (out, in, ...), 0 across groups."""
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    shape = (weight.shape[0], in_per_group * groups) + weight.shape[2:]
    dense = np.zeros(shape, weight.dtype)
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        dense[rows, g * in_per_group : (g + 1) * in_per_group] = weight[rows]
    return dense


def _grouped(dense, groups):
    """(..., in, out) dense kernel -> (..., in/groups, out): each filter's group."""
    in_per_group = dense.shape[-2] // groups
    out_per_group = dense.shape[-1] // groups
    return np.concatenate(
        [
            dense[..., g * in_per_group : (g + 1) * in_per_group,
                  g * out_per_group : (g + 1) * out_per_group]
            for g in range(groups)
        ],
        axis=-1,
    )


def _with_masked_corrections(model, residuals):
    """`model` plus a rate-1 conv of the masked weights beside the given layers."""

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if layer.name not in residuals:
            return outputs
        correction = _masked_conv(layer, args[0], residuals[layer.name])
        return keras.layers.Add(name=f"{layer.name}_compat")([outputs, correction])

    # Reuse the layers (and their weights) instead of copying them.
    return keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call
    )


def _masked_conv(layer, inputs, kernel):
    """The official dense conv restricted to the masked weights, PyTorch padding."""
    kh, kw = layer.kernel_size
    padded = keras.layers.ZeroPadding2D(
        (((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2),
        data_format=layer.data_format,
        name=f"{layer.name}_masked_pad",
    )(inputs)
    conv = keras.layers.Conv2D(
        layer.filters, layer.kernel_size, strides=layer.strides,
        groups=layer.groups, use_bias=False, data_format=layer.data_format,
        name=f"{layer.name}_masked",
    )
    outputs = conv(padded)
    conv.kernel.assign(kernel.astype(conv.kernel.dtype))
    return outputs


def _masked_message(residuals, tensors, modules):
    lines = []
    for name, residual in residuals.items():
        nonzero = np.count_nonzero(residual)
        largest = np.abs(tensors[name]["conv.weight"]).max()
        lines.append(
            f"  {name}: {nonzero} nonzero masked weights, largest |w| "
            f"{np.abs(residual).max():.3g} (largest |w| of "
            f"{modules[name]}.conv.weight: {largest:.3g})"
        )
    return (
        "The dense `conv.weight` of the official PSConv layers is not zero where "
        "`gwconv` and `gwconv_shift` act, so the checkpoint's forward pass adds a "
        f"rate-1 term there that PSConv2D has not, in {len(residuals)} layers:\n"
        + "\n".join(lines)
        + "\nPass masked='compat' to reproduce the official outputs with an "
        "extra rate-1 conv beside each of these layers, or masked='zero' to "
        "drop these weights."
    )


def _key_mismatch_message(missing, unexpected, conv_type_clashes):
    parts = ["The checkpoint does not match the model."]
    if missing:
        parts.append(f"Missing keys ({len(missing)}): {_listing(missing)}.")
    if unexpected:
        parts.append(f"Unexpected keys ({len(unexpected)}): {_listing(unexpected)}.")
    if conv_type_clashes:
        parts.append(
            "Conv types differ in: " + _listing(conv_type_clashes) + ". Load PSConv "
            "checkpoints into 'ps_' models and standard ones into their twins."
        )
    if any(key.startswith("fc.") for key in missing):
        parts.append("To load a backbone only, build the model with include_top=False.")
    parts.append("Pass strict=False to load the matching layers only.")
    return " ".join(parts)


def _listing(items):
    shown = ", ".join(items[:_LISTED_KEYS])
    more = len(items) - _LISTED_KEYS
    return shown + (f" and {more} more" if more > 0 else "")


def _permuted(shape, axes):
    return tuple(shape[axis] for axis in axes)
