"""summary() and plot_lattice()."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import reference
from psconv_tf import dilation_matrix
from psconv_tf import models
from psconv_tf import plot_lattice
from psconv_tf import summary


def test_summary_lists_every_ps_layer_with_its_rates():
    model = models.get("ps_cifar_resnet20", pattern=(1, 2, 1, 4))
    lines = []
    rows = summary(model, print_fn=lines.append)
    assert len(rows) == 18  # two 3x3 convs in each of 9 basic blocks
    assert lines[-1] == "18 PSConv2D layers"
    for row in rows:
        # Pattern (1, 2, 1, 4): half the kernels at rate 1, a quarter at 2 and 4.
        assert row["rates"] == {1: 0.5, 2: 0.25, 4: 0.25}
    assert rows[6]["strides"] == "2x2" and rows[6]["channels"] == "16 -> 32"


def test_plot_lattice_draws_each_kernel_in_its_rate_colour():
    matrix = reference.paper_lattice(16, 8, (1, 2, 1, 4), groups=2)
    ax = plot_lattice(matrix)
    image = ax.get_images()[0].get_array()
    # Cell colours index the sorted rates, 0 (white) where no kernel exists.
    expected = np.select([matrix == 0, matrix == 1, matrix == 2, matrix == 4], [0, 1, 2, 3])
    np.testing.assert_array_equal(image, expected)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["rate 1", "rate 2", "rate 4"]


def test_plot_lattice_of_a_layer_uses_its_name():
    model = models.get("ps_cifar_resnet20")
    layer = model.get_layer("layer1_0_conv1")
    ax = plot_lattice(layer)
    assert ax.get_title() == "layer1_0_conv1"
    # The layer's lattice (pattern (1, 2, 1, 4), blocked: the official one),
    # each kernel in the colour index of its rate, 1, 2, 3 for rates 1, 2, 4.
    image = np.asarray(ax.get_images()[0].get_array())
    matrix = reference.official_lattice(16, 16)
    np.testing.assert_array_equal(
        image, np.select([matrix == 1, matrix == 2, matrix == 4], [1, 2, 3], -1))
    assert [np.mean(image == index) for index in (1, 2, 3)] == [0.5, 0.25, 0.25]


def test_plot_lattice_rejects_non_integer_matrices():
    with pytest.raises(ValueError, match="2D integer matrix"):
        plot_lattice(np.ones((4, 4)) * 1.5)
