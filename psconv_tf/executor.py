"""How a `ConvPlan` runs: channel splits, kernel blocks and output sums.

A plan reads runs of consecutive channels: its convolutions' inputs, their
kernels and the output terms. Precomputing one split per tensor and the
concatenations each selection needs keeps the graph free of gathers, whose
gradients are much slower than those of splits and concatenations.
"""

import numpy as np
from keras import ops

# A selection made of more runs than this is read with one gather instead.
MAX_RUNS = 16

# Steps with at most this many groups run as separate dense convolutions: on
# a 2-core CPU at 64-256 channels these ran forward+backward in 1.0-1.3x the
# time of Conv2D, one grouped convolution of the same step in 1.2-2.0x.
MAX_SPLIT_GROUPS = 8


class PlanExecutor:
    """Runs a `lattice.ConvPlan` with the backend's convolutions.

    Args:
        plan: the `ConvPlan` of a layer.
        in_channels: input channels of the layer.
        filters: output channels of the layer.
        layer_groups: the layer's `groups`.
    """

    def __init__(self, plan, in_channels, filters, layer_groups):
        self.plan = plan
        # Whether each step runs as one dense convolution per group.
        self.split = [step.groups <= MAX_SPLIT_GROUPS for step in plan.steps]
        conv_inputs, dense, piece_sizes, piece_starts = [], [], [], []
        self.rates = []
        for step, split in zip(plan.steps, self.split):
            piece_starts.append(sum(piece_sizes))
            if not split:
                conv_inputs.append(step.inputs.ravel())
                piece_sizes.append(step.outputs.size)
                self.rates.append(step.rate)
                continue
            for inputs, outputs in zip(step.inputs, step.outputs):
                conv_inputs.append(inputs)
                dense.append((inputs, outputs))
                piece_sizes.append(outputs.size)
                self.rates.append(step.rate)
        self.input_reader = channel_reader([in_channels], conv_inputs)
        self.kernel_reader = kernel_reader(
            plan, in_channels // layer_groups, filters, dense
        )
        # source[t, f]: position of filter f (plan order) among the pieces'
        # concatenated channels in term t, -1 where the term lacks f.
        source = np.full((len(plan.sums), filters), -1)
        for term, step_indices in enumerate(plan.sums):
            for i in step_indices:
                outputs = plan.steps[i].outputs.ravel()
                source[term, outputs] = piece_starts[i] + np.arange(outputs.size)
        # Output blocks: filters over which every term reads one run or
        # nothing, so that terms add block by block and one concatenation
        # ends the sum.
        cuts = {0, filters}
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
        self.output_reader = channel_reader(piece_sizes, selections)

    def __call__(self, inputs, kernel, convolve, axis):
        """The layer output without bias.

        Args:
            inputs: the layer input.
            kernel: the layer kernel, (kh, kw, in_channels // groups, filters).
            convolve: `fn(inputs, kernel, rate)`, one (grouped) convolution.
            axis: the channel axis.
        """
        plan = self.plan
        if plan.input_order is not None:
            inputs = ops.take(inputs, plan.input_order, axis=axis)
        conv_inputs = read_channels([inputs], self.input_reader, axis)
        pieces = [
            convolve(x, k, rate)
            for x, k, rate in zip(conv_inputs, self._kernels(kernel), self.rates)
        ]
        parts = iter(read_channels(pieces, self.output_reader, axis))
        blocks = []
        for count in self.block_terms:
            block = next(parts)
            for _ in range(count - 1):
                block = block + next(parts)
            blocks.append(block)
        outputs = _concatenate(blocks, axis)
        if plan.output_order is not None:
            outputs = ops.take(outputs, np.argsort(plan.output_order), axis=axis)
        return outputs

    def _kernels(self, kernel):
        """The kernel of every convolution, in order."""
        dense = iter(read_kernels(kernel, self.kernel_reader))
        kernels = []
        for step, split in zip(self.plan.steps, self.split):
            if not split:
                flat = ops.reshape(kernel, tuple(kernel.shape[:2]) + (-1,))
                kernels.append(ops.take(flat, step.kernel_index, axis=2))
            else:
                kernels += [next(dense) for _ in range(step.groups)]
        return kernels


def channel_reader(sizes, selections):
    """How to read `selections` from tensors of `sizes` channels, concatenated.

    Args:
        sizes: channel counts of the source tensors.
        selections: index arrays into their concatenation, each a union of
            runs of consecutive channels.

    Returns:
        (sections, reads): for each source, the section sizes to split it
        into; for each selection, a list of (source, section) to concatenate,
        or its index array when it has more than MAX_RUNS runs.
    """
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
        sections.append(np.diff(cuts[(cuts >= start) & (cuts <= stop)]).tolist())
        first_section.append(int(np.searchsorted(cuts, start)))
    reads = []
    for selection, selection_runs in zip(selections, runs):
        if selection_runs is None:
            reads.append(np.asarray(selection, np.int32))
            continue
        read = []
        for start, stop in selection_runs:
            source = int(np.searchsorted(offsets, start, side="right")) - 1
            first, last = np.searchsorted(cuts, [start, stop])
            read += [
                (source, int(i) - first_section[source]) for i in range(first, last)
            ]
        reads.append(read)
    return sections, reads


def read_channels(tensors, reader, axis):
    """The selections of a `channel_reader`, as a list of tensors."""
    sections, reads = reader
    parts = [
        [tensor] if len(sizes) == 1 else ops.split(tensor, _cuts(sizes), axis)
        for tensor, sizes in zip(tensors, sections)
    ]
    results = []
    for read in reads:
        if isinstance(read, np.ndarray):
            whole = tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis)
            results.append(ops.take(whole, read, axis=axis))
            continue
        chosen = [parts[source][section] for source, section in read]
        results.append(chosen[0] if len(chosen) == 1 else ops.concatenate(chosen, axis))
    return results


def kernel_reader(plan, in_per_group, filters, convolutions):
    """How to cut dense convolution kernels out of the layer kernel.

    Each convolution's kernel is the layer kernel at its input channels (axis
    2, counted inside the group) and its filters (axis 3): read along axis 2
    for every distinct input selection, then along axis 3, each read a split
    and concatenations (a gather beyond MAX_RUNS runs, see `channel_reader`).

    Args:
        plan: a `lattice.ConvPlan`.
        in_per_group: input channels per layer group (the kernel's axis 2).
        filters: the layer's filters (the kernel's axis 3).
        convolutions: (inputs, outputs) index arrays, in plan order, of each
            dense convolution.

    Returns:
        A reader for `read_kernels`.
    """
    in_channel = plan.input_order
    out_channel = plan.output_order
    selections, outputs_of, where = [], [], []
    for inputs, outputs in convolutions:
        inputs = inputs if in_channel is None else in_channel[inputs]
        outputs = outputs if out_channel is None else out_channel[outputs]
        local = tuple((np.asarray(inputs) % in_per_group).tolist())
        if local not in selections:
            selections.append(local)
            outputs_of.append([])
        u = selections.index(local)
        where.append((u, len(outputs_of[u])))
        outputs_of[u].append(np.asarray(outputs))
    in_reader = channel_reader([in_per_group], [np.array(s) for s in selections])
    out_readers = [channel_reader([filters], outputs) for outputs in outputs_of]
    return in_reader, out_readers, where


def read_kernels(kernel, reader):
    """The dense convolution kernels of a `kernel_reader`, from the kernel."""
    in_reader, out_readers, where = reader
    slabs = read_channels([kernel], in_reader, 2)
    parts = [
        read_channels([slab], out_reader, 3)
        for slab, out_reader in zip(slabs, out_readers)
    ]
    return [parts[u][j] for u, j in where]


def _concatenate(tensors, axis):
    return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis)


def _cuts(sizes):
    return np.cumsum(sizes)[:-1].tolist()
