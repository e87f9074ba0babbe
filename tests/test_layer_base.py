"""PSConv2D and DynamicPSConv2D share one base: the checks, weights, call and
config are written once; each layer holds only what is its own."""

import pytest

from psconv_tf import DynamicPSConv2D
from psconv_tf import PSConv2D
from psconv_tf.layers.base import PSConvBase

STATIC_ONLY = ("implementation", "implementation_executor", "_make_executor",
               "pattern", "cyclic", "layout", "dilation_rate")


def test_a_dynamic_layer_has_nothing_of_the_static_lattice():
    layer = DynamicPSConv2D(4, 3, padding="same")
    assert not isinstance(layer, PSConv2D)
    assert [name for name in STATIC_ONLY if hasattr(layer, name)] == []
    assert layer.rates == (1, 2)
    assert set(layer.get_config()) & set(STATIC_ONLY) == set()


@pytest.mark.parametrize("method", ["__init__", "build", "call", "compute_output_shape",
                                    "get_config", "from_config", "dense_kernel"])
def test_the_shared_logic_has_one_home(method):
    for layer in (PSConv2D, DynamicPSConv2D):
        owner = next(cls for cls in layer.__mro__ if method in cls.__dict__)
        if method in ("__init__", "get_config", "build"):
            # Each layer adds its own arguments, config or weights to the base's.
            assert issubclass(owner, PSConvBase)
        else:
            assert owner is PSConvBase, (layer.__name__, method, owner.__name__)


@pytest.mark.parametrize("layer", [PSConv2D, DynamicPSConv2D])
@pytest.mark.parametrize("kwargs, name", [
    (dict(filters=0), "filters"), (dict(filters=True), "filters"),
    (dict(groups=2.0), "groups"), (dict(kernel_size=(3, 0)), "kernel_size"),
    (dict(strides="1"), "strides"), (dict(padding="full"), "padding"),
    (dict(data_format="nhwc"), "data_format"),
])
def test_both_layers_refuse_a_bad_shared_argument_by_name(layer, kwargs, name):
    arguments = {"filters": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}`"):
        layer(**arguments)
