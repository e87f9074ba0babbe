"""The examples in the docstrings run and print what they show."""

import doctest

import pytest

import psconv_tf.models
import psconv_tf.ps_conv2d


@pytest.mark.parametrize("module", [psconv_tf.ps_conv2d, psconv_tf.models])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
