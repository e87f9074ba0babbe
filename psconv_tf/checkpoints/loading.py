"""`load_torch`: PyTorch checkpoints (torchvision layout, official PSConv
layers) into the zoo, filled completely or refused.

Which key fills which layer is `torch_keys`'s job; how the three convs of
an official PSConv layer become one `PSConv2D` kernel is `official_psconv`'s.
Here: the arguments, the checks that nothing arrives silently short (conv
types, coverage, the masked weights) and the assignment, which happens only
once every check has passed.
"""

import warnings

import keras
import numpy as np

from psconv_tf.checkpoints import keys as torch_keys
from psconv_tf.checkpoints.official import KERAS_TO_TORCH_CONV
from psconv_tf.checkpoints.official import PSCONV_PARTS
from psconv_tf.checkpoints.official import TORCH_TO_KERAS_CONV
from psconv_tf.checkpoints.official import checked
from psconv_tf.checkpoints.official import misses_released_mask
from psconv_tf.checkpoints.official import official_dense_kernel  # noqa: F401 (re-exported)
from psconv_tf.checkpoints.official import psconv_values
from psconv_tf.checkpoints.official import with_masked_corrections
from psconv_tf.engine import arguments
from psconv_tf.layers.ps_conv2d import PSConv2D
from psconv_tf.checkpoints.keys import listing

MASKED_MODES = ("error", "compat", "zero")
# Checkpoint params with no Keras counterpart.
IGNORED_PARAMS = ("num_batches_tracked",)
# With strict=False, a load that would fill less than this share of the
# model's weight values is refused: the checkpoint is not this model's.
MIN_LOADED_FRACTION = 0.5


def load_torch(model, path_or_state_dict, strict=True, masked="error", dilation=2):
    """Loads a PyTorch ResNet / ResNeXt checkpoint into a zoo model.

    Works for the official PS-ResNet-50/101 and PS-ResNeXt-101 (32x4d)
    ImageNet weights into `ps_resnet50`, `ps_resnet101` and
    `ps_resnext101_32x4d`, and for standard torchvision checkpoints into the
    standard twins. Keys may be wrapped (DataParallel's `module.`, a
    Lightning module's `model.`, ...: a prefix that every key has is removed
    when the keys then name the model's layers); from a detector checkpoint
    (keys `backbone.*`) only the backbone is read (build the model with
    `include_top=False`). Two keys that would fill the same weight are
    refused. BatchNorm running statistics are loaded; `num_batches_tracked`
    has no Keras counterpart and is ignored.

    In an official PSConv layer, the dense rate-1 conv `conv.weight` is
    meant to be zero where `gwconv` and `gwconv_shift` act (the masked
    positions). Where it is not (mmdet re-initializes the weights after the
    mask is applied and the gradient hook then keeps those values; the
    official `PSGConv2d` masks only some of its groups), the official layer
    adds a rate-1 term there that no PSConv has. An `OfficialPSConv2D` (the
    zoo's `ps_NAME_official`, the authors' grouped network) holds that term
    where the released `PSGConv2d` leaves it, in its `rate1_kernel`, and is
    filled in place; what remains, and everything for other layers, is
    judged by `masked`:

    - `"error"` (default): raise, naming every such layer with the number and
      the largest magnitude of its nonzero masked weights.
    - `"compat"`: reproduce the official forward pass in a new model: a copy
      of `model` (same layers, names and configuration) that receives all
      the weights and adds, in parallel to each affected PSConv layer `L`,
      the rate-1 conv of its masked weights: `ZeroPadding2D`
      `L_masked_pad`, `Conv2D` `L_masked` (the layer's groups, PyTorch
      padding) and `Add` `L_compat`. `model` itself is left as it was: use
      the returned model. Only standard layers are added, so the model
      saves to `.keras` and loads back like any other; the correction is a
      full (grouped) 3x3 conv, so each affected layer costs about twice as
      much. Only plain functional models (the zoo's) can be copied so; for
      others (a keras-hub backbone) this raises before assigning anything.
      Without affected layers, `model` is filled and returned. (It stays
      the general correction: it reproduces any nonzero masked weights,
      also mmdet's re-initialised ones; for the released grouped layer's
      own weights, build `ps_NAME_official` instead, which trains, saves,
      exports and becomes a preset as it is.)
    - `"zero"`: drop the masked weights, keeping the pure PSConv.

    Args:
        model: a functional zoo model (`psconv_tf.models.get(...)`) or a
            `psconv_tf.hub.PSResNetBackbone`.
        path_or_state_dict: path of a `.pth` file (read with
            `torch.load(weights_only=True)`, which never unpickles code; needs
            torch, the `torch` extra), or a mapping of keys to tensors or
            arrays, optionally wrapped as `{"state_dict": ...}`.
        strict: if True, every checkpoint key must belong to a layer and
            every weighted layer must find its keys. If False, keys without a
            layer are ignored and layers missing keys keep their weights; a
            load that leaves weights as they were warns, saying how many it
            assigned, and one that would fill none, or less than half of the
            model's weight values (`MIN_LOADED_FRACTION`), raises before
            assigning anything. Shape mismatches and conv types that differ
            (a standard conv's weights for a PSConv2D layer, or the reverse)
            raise either way.
        masked: `"error"`, `"compat"` or `"zero"`, see above.
        dilation: the `dilation` of the official layers: `gwconv` runs at
            this rate, `gwconv_shift` at twice it (2 in the published models,
            which the zoo's default pattern (1, 2, 1, 4) matches).

    Returns:
        `model`, filled, or the compat model for `masked="compat"` (see above).

    Raises:
        ValueError: for missing or unexpected keys (with `strict`), too few
            weights found (without), two keys for one weight, a shape
            mismatch, a conv type mismatch, a PSConv layer whose rates or
            padding differ from the official layer's, nonzero masked weights
            with `masked="error"`, or `masked="compat"` for a model that is
            not plain functional.

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
    if not arguments.is_positive_int(dilation):
        raise ValueError(
            "Argument `dilation` must be a positive integer. "
            f"Received: dilation={dilation!r}"
        )
    layers = [layer for layer in model.layers if layer.weights]
    names = {layer.name for layer in layers}
    state_dict = torch_keys.unwrapped(torch_keys.read_state_dict(path_or_state_dict), names)
    tensors, modules, unexpected = torch_keys.keys_by_layer(state_dict, names)
    clashes = _conv_type_clashes(layers, tensors)
    if clashes:
        raise ValueError(
            "Conv types differ in: " + listing(clashes) + ". Load PSConv "
            "checkpoints into 'ps_' models and standard ones into their twins."
        )

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
        raise ValueError(_key_mismatch_message(missing, unexpected))

    assignments, residuals, released = [], {}, []
    for layer in complete:
        params, module = tensors[layer.name], modules[layer.name]
        if isinstance(layer, PSConv2D):
            values, residual = psconv_values(layer, params, module, dilation)
            if np.any(residual):
                residuals[layer.name] = residual
                if misses_released_mask(layer, residual):
                    released.append(layer.name)
        else:
            values = _plain_values(layer, params, module)
        assignments += values
    if residuals and masked == "error":
        raise ValueError(_masked_message(residuals, tensors, modules, released))
    compat = bool(residuals) and masked == "compat"
    if compat and not _is_plain_functional(model):
        raise ValueError(_compat_refusal(model, residuals))
    if not strict:
        _check_coverage(model, layers, complete, assignments, unexpected, state_dict)
    if compat:
        model, assignments = _copy_with(model, assignments)
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    if compat:
        return with_masked_corrections(model, residuals)
    return model


def _conv_type_clashes(layers, tensors):
    """Layers whose conv type (PSConv or standard) differs between checkpoint
    and model."""
    clashes = []
    for layer in layers:
        params = tensors.get(layer.name, {})
        from_psconv = any("." in param for param in params)
        from_standard = any("." not in param for param in params)
        if isinstance(layer, PSConv2D) and from_standard:
            clashes.append(f"{layer.name} (checkpoint: standard conv, model: PSConv2D)")
        elif not isinstance(layer, PSConv2D) and from_psconv:
            clashes.append(
                f"{layer.name} (checkpoint: PSConv, model: {type(layer).__name__})"
            )
    return clashes


def _check_coverage(model, layers, complete, assignments, unexpected, state_dict):
    """Without `strict`: raises when the load would fill nothing or less than
    `MIN_LOADED_FRACTION` of the model's weight values, warns when it leaves
    any weight as it was."""
    variables = model.weights
    total = sum(int(np.prod(v.shape)) for v in variables)
    loaded = sum(int(np.prod(v.shape)) for v, _ in assignments)
    left = [layer.name for layer in layers if layer not in complete]
    if not assignments:
        raise ValueError(
            f"load_torch would assign none of the model's {len(variables)} weights: "
            f"no checkpoint key names one of its layers (the checkpoint's keys: "
            f"{listing(sorted(state_dict), 3)}; the model's layers are named after "
            f"torchvision's keys, e.g. {left[0]!r} for "
            f"'{left[0].replace('_', '.')}.weight')."
        )
    if loaded < MIN_LOADED_FRACTION * total:
        raise ValueError(
            f"load_torch would assign only {len(assignments)} of the model's "
            f"{len(variables)} weights ({100 * loaded / total:.1f} % of the values, "
            f"less than {100 * MIN_LOADED_FRACTION:.0f} %): is the checkpoint this "
            f"architecture's? {len(left)} layers found no keys: {listing(left, 6)}. "
            "strict=True lists every missing and unexpected key."
        )
    if len(assignments) < len(variables):
        unused = [key for key in unexpected if not key.endswith(IGNORED_PARAMS)]
        warnings.warn(
            f"load_torch assigned {len(assignments)} of the model's "
            f"{len(variables)} weights ({100 * loaded / total:.1f} % of the values); "
            f"layers that kept their weights ({len(left)}): {listing(left, 6) or '-'}; "
            f"checkpoint keys unused ({len(unused)}): {listing(unused, 6) or '-'}.",
            stacklevel=3,
        )


def _is_plain_functional(model):
    """A model of Keras's own functional class, which `clone_model` copies
    as it is (not a subclass such as a keras-hub backbone)."""
    return isinstance(model, keras.Function) and type(model).__module__.startswith("keras.")


def _compat_refusal(model, residuals):
    return (
        f"masked='compat' adds a rate-1 conv beside {len(residuals)} PSConv layers "
        f"({listing(list(residuals), 4)}), which a {type(model).__name__} cannot "
        "hold: load_torch fills it in place. Pass masked='zero' to drop the "
        "masked weights (the outputs then differ from the official ones), or "
        "load into the zoo model (psconv_tf.models.get(..., include_top=False)) "
        "and use the model load_torch returns."
    )


def _copy_with(model, assignments):
    """A copy of `model` with its weights, and the assignments retargeted to
    the copy's variables (matched by path)."""
    copy = keras.models.clone_model(model)
    by_path = {variable.path: variable for variable in copy.weights}
    for variable in model.weights:
        by_path[variable.path].assign(variable)
    return copy, [(by_path[variable.path], value) for variable, value in assignments]


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
            (variable, checked(layer, module, name, params[name], variable.shape))
            for variable, name in pairs
            if variable is not None
        ]
    if isinstance(layer, keras.layers.Dense):
        torch_shape = tuple(layer.kernel.shape)[::-1]
        kernel = checked(layer, module, "weight", params["weight"], torch_shape).T
    else:
        torch_shape = _permuted(layer.kernel.shape, KERAS_TO_TORCH_CONV)
        kernel = checked(layer, module, "weight", params["weight"], torch_shape)
        kernel = kernel.transpose(TORCH_TO_KERAS_CONV)
    values = [(layer.kernel, kernel)]
    if layer.use_bias:
        bias = checked(layer, module, "bias", params["bias"], layer.bias.shape)
        values.append((layer.bias, bias))
    return values


def _masked_message(residuals, tensors, modules, released):
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
        + _released_hint(residuals, released)
    )


def _released_hint(residuals, released):
    if not released:
        return ""
    every = "All of them lie" if len(released) == len(residuals) else (
        f"In {len(released)} of these layers ({listing(released, 4)}) they lie")
    return (
        f" {every} where the released grouped layer (PSGConv2d) leaves its "
        "rate-1 kernels: the checkpoint is the authors' grouped network, which "
        "the zoo builds as 'ps_NAME_official' (conv='psconv_official', "
        "OfficialPSConv2D) and which loads these weights as they are."
    )


def _key_mismatch_message(missing, unexpected):
    parts = ["The checkpoint does not match the model."]
    if missing:
        parts.append(f"Missing keys ({len(missing)}): {listing(missing)}.")
    if unexpected:
        parts.append(f"Unexpected keys ({len(unexpected)}): {listing(unexpected)}.")
    if any(key.startswith("fc.") for key in missing):
        parts.append("To load a backbone only, build the model with include_top=False.")
    parts.append("Pass strict=False to load the matching layers only.")
    return " ".join(parts)


def _permuted(shape, axes):
    return tuple(shape[axis] for axis in axes)
