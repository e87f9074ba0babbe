"""How a `ConvPlan` runs: its implementations, channel reads and output sums.

Every implementation computes the same function (Eq. 3) from the same kernel:

- `"split"`: one convolution per branch of every step (a dense convolution
  per rate and input-class selection, run in all folded layer groups at
  once as a convolution with `groups` groups).
- `"grouped"`: one grouped convolution per step: its branches (and the
  folded layer groups) as the groups of a single convolution.
- `"masked"`: one convolution per rate over all channels, with the kernel
  masked to the kernels of that rate (the textbook form: as many times
  Conv2D's MACs as there are rates, but the fewest ops; for tiny layers).
- `"grouped_s2b"`: `"grouped"` with every dilated convolution at stride 1
  run at rate 1 over the input's rate x rate phases moved into the batch
  (`rate_conv.RateConv.space_to_batch`): two copies more, but far faster
  backward passes where groups have few channels (ResNeXt) on TensorFlow's
  CPU, whose dilated kernels are slow there.
- `"fused"` (JAX only, `JAX_IMPLEMENTATIONS`): Pallas kernels that compute
  Eq. 3 in one pass each (`fused_executor`); it runs no plan.

Reads. A plan's convolutions read runs of consecutive channels: inputs,
kernels and output terms are cut with one split per tensor and joined with
concatenations. Layer groups are folded into an axis of their own by a
reshape ((..., C) -> (..., groups, C / groups)), so a read inside a group
serves all groups at once. Gathers happen only where a selection has more
than MAX_RUNS runs: with the blocked layout never; with the interleaved layout
(classes strided by t) or an explicit matrix whose classes are scattered, for
the selections so fragmented. `"masked"` reads nothing.

Non-finite inputs. Every implementation propagates them as Eq. 3 does: an
Inf or NaN input reaches exactly the outputs whose kernels read it at their
own rate. The plan implementations never multiply a kernel with an input
channel of another rate, so this holds by construction. A masked sum
(`masked_sum`, also DynamicPSConv2D's form) multiplies every input with the
zeros of the other rates' masks, and Inf * 0 is NaN: it convolves the finite
part of the inputs and, where they are not all finite, sets the non-finite
outputs from counts of the +Inf, -Inf and NaN terms of Eq. 3 (`_non_finite`).
"""

import dataclasses

import keras
import numpy as np
from keras import ops

IMPLEMENTATIONS = ("split", "grouped", "masked", "grouped_s2b")
# Implementations that need the JAX backend.
JAX_IMPLEMENTATIONS = ("fused",)

# A selection made of more runs than this is read with one gather instead.
MAX_RUNS = 16


@dataclasses.dataclass(frozen=True)
class Gather:
    """A selection read with one gather from the concatenated sources."""

    indices: np.ndarray


@dataclasses.dataclass(frozen=True)
class Pieces:
    """A selection read as sections of the split sources, concatenated.

    Attributes:
        parts: (source, section) pairs, in order.
    """

    parts: tuple


@dataclasses.dataclass(frozen=True)
class ChannelReader:
    """Reads selections of channels from tensors along one axis.

    Attributes:
        sections: per source tensor, the sizes to split it into.
        reads: per selection, a `Pieces` or a `Gather`.
    """

    sections: tuple
    reads: tuple

    @classmethod
    def build(cls, sizes, selections):
        """How to read `selections` (index arrays into the concatenation of
        sources of `sizes` channels)."""
        offsets = np.cumsum([0] + list(sizes))
        cuts = set(offsets.tolist())
        runs = []
        for selection in selections:
            selection = np.asarray(selection)
            source = np.searchsorted(offsets, selection, side="right") - 1
            breaks = np.flatnonzero(
                (np.diff(selection) != 1) | (np.diff(source) != 0)
            )
            starts = selection[np.concatenate([[0], breaks + 1])]
            stops = selection[np.concatenate([breaks, [len(selection) - 1]])] + 1
            if len(starts) > MAX_RUNS:
                runs.append(None)
                continue
            runs.append(list(zip(starts.tolist(), stops.tolist())))
            cuts.update(starts.tolist() + stops.tolist())
        cuts = np.array(sorted(cuts))
        sections, first_section = [], []
        for start, stop in zip(offsets[:-1], offsets[1:]):
            sections.append(tuple(np.diff(cuts[(cuts >= start) & (cuts <= stop)]).tolist()))
            first_section.append(int(np.searchsorted(cuts, start)))
        reads = []
        for selection, selection_runs in zip(selections, runs):
            if selection_runs is None:
                reads.append(Gather(np.asarray(selection, np.int32)))
                continue
            parts = []
            for start, stop in selection_runs:
                source = int(np.searchsorted(offsets, start, side="right")) - 1
                first, last = np.searchsorted(cuts, [start, stop])
                parts += [
                    (source, int(i) - first_section[source]) for i in range(first, last)
                ]
            reads.append(Pieces(tuple(parts)))
        return cls(tuple(sections), tuple(reads))

    def __call__(self, tensors, axis):
        """The selections, as a list of tensors."""
        parts = [
            [tensor] if len(sizes) == 1 else _split(tensor, sizes, axis)
            for tensor, sizes in zip(tensors, self.sections)
        ]
        results = []
        for read in self.reads:
            if isinstance(read, Gather):
                whole = _concatenate(tensors, axis)
                results.append(ops.take(whole, read.indices, axis=axis))
            else:
                results.append(
                    _concatenate([parts[s][i] for s, i in read.parts], axis)
                )
        return results


@dataclasses.dataclass(frozen=True)
class Convolution:
    """One convolution of an implementation: some branches of one step.

    Attributes:
        rate: its rate.
        inputs: input selection (branches' inputs, concatenated), in a group.
        kernels: per branch, (index of its kernel input selection, index of
            its read among that selection's filter reads).
        groups: its groups: branches x folded layer groups.
    """

    rate: int
    inputs: np.ndarray
    kernels: tuple
    groups: int


class PlanExecutor:
    """Runs a `lattice.ConvPlan` with one of `IMPLEMENTATIONS`.

    Args:
        plan: the `ConvPlan` of a layer.
        convs: {rate: `rate_conv.RateConv`} of the layer.
        in_per_group: input channels per layer group (the kernel's axis 2).
        implementation: "split", "grouped" or "grouped_s2b".
    """

    def __init__(self, plan, convs, in_per_group, implementation):
        self.plan, self.convs, self.in_per_group = plan, convs, in_per_group
        by_branch = implementation == "split"
        kernel_inputs, kernel_outputs = [], []
        self.convolutions, piece_sizes, piece_starts = [], [], []
        for step in plan.steps:
            piece_starts.append(sum(piece_sizes))
            chunks = [[b] for b in range(step.branches)] if by_branch else [
                list(range(step.branches))
            ]
            for chunk in chunks:
                kernels = []
                for b in chunk:
                    local = tuple((step.inputs[b] % in_per_group).tolist())
                    if local not in kernel_inputs:
                        kernel_inputs.append(local)
                        kernel_outputs.append([])
                    u = kernel_inputs.index(local)
                    kernels.append((u, len(kernel_outputs[u])))
                    kernel_outputs[u].append(step.outputs[b])
                self.convolutions.append(Convolution(
                    step.rate, np.concatenate([step.inputs[b] for b in chunk]),
                    tuple(kernels), len(chunk) * plan.groups,
                ))
                piece_sizes.append(len(chunk) * step.outputs.shape[1])
        self.input_reader = ChannelReader.build(
            [plan.in_channels], [c.inputs for c in self.convolutions]
        )
        self.kernel_input_reader = ChannelReader.build(
            [in_per_group], [np.array(s) for s in kernel_inputs]
        )
        self.kernel_output_readers = [
            ChannelReader.build([plan.filters], outputs) for outputs in kernel_outputs
        ]
        self._build_output_sum(piece_sizes, piece_starts)

    def _build_output_sum(self, piece_sizes, piece_starts):
        # source[t, f]: position of filter f among the pieces' concatenated
        # channels in term t, -1 where the term lacks f.
        plan = self.plan
        source = np.full((len(plan.sums), plan.filters), -1)
        for term, step_indices in enumerate(plan.sums):
            for i in step_indices:
                outputs = plan.steps[i].outputs.ravel()
                source[term, outputs] = piece_starts[i] + np.arange(outputs.size)
        # Output blocks: filters over which every term reads one run or
        # nothing, so that terms add block by block and one concatenation
        # ends the sum.
        cuts = {0, plan.filters}
        for row in source:
            present = row >= 0
            breaks = (present[1:] != present[:-1]) | (
                present[1:] & present[:-1] & (np.diff(row) != 1)
            )
            cuts.update((np.flatnonzero(breaks) + 1).tolist())
        cuts = sorted(cuts)
        selections, self.block_terms = [], []
        for start, stop in zip(cuts[:-1], cuts[1:]):
            reads = [row[start:stop] for row in source if row[start] >= 0]
            selections += reads
            self.block_terms.append(len(reads))
        self.output_reader = ChannelReader.build(piece_sizes, selections)

    def __call__(self, inputs, kernel, data_format):
        """The layer output without bias, computed in `data_format`."""
        groups = self.plan.groups
        axis = 3 if data_format == "channels_last" else 1
        read = axis + 1 if groups > 1 else axis  # the in-group channel axis
        conv_inputs = [
            _unfold(x, axis, groups)
            for x in self.input_reader([_fold(inputs, axis, groups)], read)
        ]
        pieces = [
            self.convs[c.rate](x, k)
            for c, x, k in zip(self.convolutions, conv_inputs, self._kernels(kernel))
        ]
        parts = iter(self.output_reader([_fold(p, axis, groups) for p in pieces], read))
        blocks = []
        for count in self.block_terms:
            block = next(parts)
            for _ in range(count - 1):
                block = block + next(parts)
            blocks.append(block)
        return _unfold(_concatenate(blocks, read), axis, groups)

    def _kernels(self, kernel):
        """The kernel of every convolution, in order."""
        groups = self.plan.groups
        filters_axis = 4 if groups > 1 else 3
        slabs = self.kernel_input_reader([_fold(kernel, 3, groups)], 2)
        reads = [
            reader([slab], filters_axis)
            for slab, reader in zip(slabs, self.kernel_output_readers)
        ]
        return [
            _unfold(
                _concatenate([reads[u][j] for u, j in c.kernels], filters_axis), 3, groups
            )
            for c in self.convolutions
        ]


class MaskedExecutor:
    """Runs a layer as one masked convolution per rate (`"masked"`).

    Args:
        rates: the layer's (filters, in_channels // groups) rates.
        convs: {rate: `rate_conv.RateConv`} of the layer.
    """

    def __init__(self, rates, convs):
        self.convs = convs
        self.masks = {
            rate: (rates == rate).T[None, None].astype("float32") for rate in convs
        }

    def __call__(self, inputs, kernel, data_format):
        del data_format  # the convolutions know it
        masks = {rate: ops.cast(mask, kernel.dtype) for rate, mask in self.masks.items()}
        return masked_sum(inputs, kernel, masks, self.convs)


def masked_sum(inputs, kernel, masks, convs):
    """The sum over rates d of convs[d](inputs, kernel * masks[d]), with
    non-finite inputs propagated as Eq. 3 does (see the module docstring).

    The convolutions read the finite part of the inputs (Inf and NaN set to
    0), which is Eq. 3 wherever it is finite; where the inputs are not all
    finite, a branch without gradient computes the outputs that Eq. 3 makes
    non-finite (`_non_finite`). Only that branch is conditional: the graph
    holds the convolutions once, and TensorFlow differentiates no branch.

    Args:
        inputs: the layer's inputs in the compute format.
        kernel: (kh, kw, in_channels // groups, filters).
        masks: {rate: 0/1 tensor broadcastable to the kernel}, disjoint.
        convs: {rate: `rate_conv.RateConv`}.
    """
    finite = ops.isfinite(inputs)
    readable = ops.where(finite, inputs, 0.0)
    outputs = None
    for rate, mask in masks.items():
        term = convs[rate](readable, kernel * mask)
        outputs = term if outputs is None else outputs + term
    special = ops.stop_gradient(ops.cond(
        ops.all(finite),
        lambda: ops.zeros_like(outputs),
        lambda: _non_finite(inputs, ops.stop_gradient(kernel), masks, convs, outputs.dtype),
    ))
    return outputs + special  # finite + 0, or Eq. 3's Inf or NaN


def _non_finite(inputs, kernel, masks, convs, dtype):
    """Eq. 3's outputs where they are not finite (+-Inf or NaN), 0 elsewhere.

    A term w * x of Eq. 3 with x = +-Inf is +-Inf by the sign of w (NaN for
    w = 0) and with x = NaN is NaN; an output is NaN if it has a NaN term or
    terms of both infinities. The terms are counted by convolutions of the
    indicators of +Inf, -Inf and NaN (stacked along the batch) with the
    indicators of positive, negative and zero kernels of each rate.
    """
    plus, minus, nan = (
        ops.cast(flag, kernel.dtype)
        for flag in (inputs == float("inf"), inputs == float("-inf"), ops.isnan(inputs))
    )
    stacked = ops.concatenate([plus, minus, nan], axis=0)
    counts = {"+": 0, "-": 0, "nan": 0}
    for rate, mask in masks.items():
        signs = [
            ops.cast(condition, kernel.dtype) * ops.stop_gradient(mask)
            for condition in (kernel > 0, kernel < 0, kernel == 0)
        ]
        # (+Inf, -Inf, NaN inputs) x (positive, negative, zero kernels).
        (p_pos, m_pos, n_pos), (p_neg, m_neg, n_neg), (p_zero, m_zero, n_zero) = (
            ops.split(convs[rate](stacked, sign), 3, axis=0) for sign in signs
        )
        counts["+"] = counts["+"] + p_pos + m_neg
        counts["-"] = counts["-"] + p_neg + m_pos
        counts["nan"] = counts["nan"] + n_pos + n_neg + n_zero + p_zero + m_zero
    inf, nan_value = ops.cast(float("inf"), dtype), ops.cast(float("nan"), dtype)
    undefined = (counts["nan"] > 0) | ((counts["+"] > 0) & (counts["-"] > 0))
    special = ops.where(counts["+"] > 0, inf, ops.cast(0, dtype))
    special = ops.where(counts["-"] > 0, -inf, special)
    return ops.where(undefined, nan_value, special)


def _fold(tensor, axis, groups):
    """(..., C at `axis`, ...) -> (..., groups, C / groups, ...); a view."""
    if groups == 1:
        return tensor
    shape = list(ops.shape(tensor))
    shape[axis : axis + 1] = [groups, shape[axis] // groups]
    return ops.reshape(tensor, shape)


def _unfold(tensor, axis, groups):
    if groups == 1:
        return tensor
    shape = list(ops.shape(tensor))
    shape[axis : axis + 2] = [shape[axis] * shape[axis + 1]]
    return ops.reshape(tensor, shape)


def _concatenate(tensors, axis):
    return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis)


def _split(tensor, sizes, axis):
    """`tensor` cut along `axis` into pieces of `sizes`. On PyTorch by
    torch.split: Keras' torch split turns the cuts into a tensor and back
    (`.tolist()`), a data-dependent graph break under torch.compile."""
    if keras.backend.backend() == "torch":
        import torch

        return list(torch.split(tensor, list(sizes), dim=axis))
    return ops.split(tensor, np.cumsum(sizes)[:-1].tolist(), axis)
