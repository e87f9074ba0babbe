"""Grouped weights and their dense, block-diagonal form.

A grouped convolution with G groups holds, for each filter c, weights only
for the input channels of c's group: an array with an output axis of
`filters` and an input axis of `in_channels // G`. Its dense form has an
input axis of `in_channels` and zeros across groups: filter c of group
g = c // (filters // G) sits in columns g * (in_channels // G) ... (g + 1) *
(in_channels // G) - 1. The same rule places a dilation matrix (filters,
in_channels // G), a Keras kernel (kh, kw, in_channels // G, filters) and a
PyTorch weight (filters, in_channels // G, kh, kw); `expand` and `compress`
take the two axes, and `compress(expand(w)) == w`.
"""

import numpy as np


def expand(grouped, groups, out_axis=0, in_axis=1):
    """The dense form of `grouped`: its `in_axis` `groups` times longer,
    zero across groups."""
    weight = np.moveaxis(np.asarray(grouped), (out_axis, in_axis), (0, 1))
    filters, in_per_group = weight.shape[:2]
    out_per_group = filters // groups
    dense = np.zeros((filters, in_per_group * groups) + weight.shape[2:], weight.dtype)
    for group in range(groups):
        rows = slice(group * out_per_group, (group + 1) * out_per_group)
        columns = slice(group * in_per_group, (group + 1) * in_per_group)
        dense[rows, columns] = weight[rows]
    return np.moveaxis(dense, (0, 1), (out_axis, in_axis))


def compress(dense, groups, out_axis=0, in_axis=1):
    """The inverse of `expand`: each filter's weights within its group."""
    weight = np.moveaxis(np.asarray(dense), (out_axis, in_axis), (0, 1))
    out_per_group = weight.shape[0] // groups
    in_per_group = weight.shape[1] // groups
    grouped = np.concatenate([
        weight[group * out_per_group : (group + 1) * out_per_group,
               group * in_per_group : (group + 1) * in_per_group]
        for group in range(groups)
    ])
    return np.moveaxis(grouped, (0, 1), (out_axis, in_axis))
