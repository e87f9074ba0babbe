"""Grouped weights and their dense form, against scipy's block_diag."""

import numpy as np
import pytest
from scipy.linalg import block_diag

from psconv_tf.engine import grouped


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_expand_is_block_diagonal_and_compress_inverts_it(groups):
    rng = np.random.default_rng(groups)
    filters, in_per_group = 2 * groups, 3
    matrix = rng.integers(1, 9, (filters, in_per_group))
    blocks = np.split(matrix, groups)  # each group's filters
    expected = block_diag(*blocks)
    np.testing.assert_array_equal(grouped.expand(matrix, groups), expected)
    np.testing.assert_array_equal(grouped.compress(expected, groups), matrix)


def test_a_keras_kernel_expands_along_its_last_two_axes():
    groups, kh, kw, in_per_group, filters = 2, 2, 3, 3, 4
    kernel = np.random.default_rng(0).normal(size=(kh, kw, in_per_group, filters))
    dense = grouped.expand(kernel, groups, out_axis=3, in_axis=2)
    assert dense.shape == (kh, kw, in_per_group * groups, filters)
    for i in range(kh):
        for j in range(kw):
            per_filter = np.split(kernel[i, j].T, groups)  # (filters/groups, in_per_group)
            np.testing.assert_array_equal(dense[i, j].T, block_diag(*per_filter))
    np.testing.assert_array_equal(grouped.compress(dense, groups, out_axis=3, in_axis=2), kernel)
