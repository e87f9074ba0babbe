"""The mask of the official PSConv layers (d-li14/PSConv), as built and as meant.

An official layer holds, beside its dilated grouped convs, a dense rate-1
conv `conv` (grouped by `groups`, weight (filters, in_channels // groups))
that is meant to be zero where the dilated convs act: the mask, held at
zero at initialisation and by a gradient hook. Count filters and input
channels in blocks: `groups * parts` filter blocks of filters / (groups *
parts) filters, and per group `parts` input blocks of in_channels /
(groups * parts) channels. Filter block r = part + group * step masks the
input blocks `part` and (part + parts / 2) % parts of its group, for every
part < parts and group < groups, where r < groups * parts.

- step = parts: every filter block once, the lattice's positions of the
  rates other than 1 (`slip=False`, what the paper's layer holds at zero).
- step = groups: the official grouped layer `PSGConv2d` as released. For
  groups > 1 most r then pass the last block and are skipped: of 32 groups
  with 4 parts only groups 0, 8, 16 and 24 are masked (for groups a multiple
  of parts, the groups g * groups / parts, g < parts). The other groups keep
  a trained rate-1 kernel beside each dilated one (`slip=True`).

For groups = 1 both are the same mask, the official ungrouped `PSConv2d`'s.
"""

import numpy as np


def masked_positions(filters, in_channels, groups, parts, slip):
    """Bool (filters, in_channels // groups): where the official `conv` is
    held at zero, with the released indexing (`slip=True`) or as meant.

    Args:
        filters, in_channels: the layer's channels, divisible by
            groups * parts.
        groups: the layer's groups.
        parts: the official layer's parts (even).
        slip: True for the released `PSGConv2d`'s filter-block step
            `groups`, False for the step `parts`.
    """
    blocks = groups * parts
    if filters % blocks or in_channels % blocks or parts % 2:
        raise ValueError(
            f"The official mask needs filters ({filters}) and input channels "
            f"({in_channels}) divisible by groups x parts ({groups} x {parts}) "
            "and an even number of parts."
        )
    out_block, in_block = filters // blocks, in_channels // blocks
    step = groups if slip else parts
    mask = np.zeros((filters, in_channels // groups), bool)
    for group in range(groups):
        for part in range(parts):
            row = part + group * step
            if row >= blocks:
                continue
            for in_part in (part, (part + parts // 2) % parts):
                mask[row * out_block : (row + 1) * out_block,
                     in_part * in_block : (in_part + 1) * in_block] = True
    return mask
