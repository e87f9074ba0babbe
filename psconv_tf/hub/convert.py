"""PSConv for keras-hub backbones: `convert_backbone`.

`psconv_tf.convert` rewrites functional graphs and returns a plain
functional model. A keras-hub backbone is a `Backbone` subclass whose config
holds its constructor's arguments, not a graph, so no argument of, say,
`ResNetBackbone` can say "these convs are PSConv2D". `convert_backbone` keeps
what the keras-hub tasks need, a `FeaturePyramidBackbone` with the same
`pyramid_outputs`, as a `ConvertedBackbone`: a backbone whose config is the
converted graph itself, so it saves to a preset and loads back.
"""

import keras
from keras_hub.models import FeaturePyramidBackbone

from psconv_tf.convert import convert as psconv_convert
from psconv_tf.hub import saving

_OUTPUT = "output"


@keras.saving.register_keras_serializable(package="psconv_tf")
class ConvertedBackbone(saving.PresetLoading, saving.StagedSaving, FeaturePyramidBackbone):
    """A feature-pyramid backbone defined by a functional graph.

    Args:
        graph: a functional `keras.Model` (or its serialized config) whose
            outputs are a dict: "output" (the backbone's output) and one
            entry per pyramid level ("P2", ...).
        dtype: dtype policy of the backbone.
    """

    def __init__(self, graph, dtype=None, **kwargs):
        if isinstance(graph, dict):
            graph = keras.saving.deserialize_keras_object(graph)
        outputs = graph.output
        if not isinstance(outputs, dict) or _OUTPUT not in outputs:
            raise ValueError(
                "Argument `graph` must be a functional model with dict outputs "
                f"holding {_OUTPUT!r} and the pyramid levels. Received outputs: "
                f"{outputs!r}"
            )
        (image,) = graph.inputs
        super().__init__(inputs=image, outputs=outputs[_OUTPUT], dtype=dtype, **kwargs)
        self.pyramid_outputs = {k: v for k, v in outputs.items() if k != _OUTPUT}
        self.image_shape = tuple(image.shape[1:])
        self._graph_config = keras.saving.serialize_keras_object(graph)

    def get_config(self):
        config = super().get_config()
        config.update(graph=self._graph_config)
        return config


def convert_backbone(backbone, **convert_kwargs):
    """`psconv_tf.convert` for a keras-hub `FeaturePyramidBackbone`.

    Args:
        backbone: e.g. `keras_hub.models.ResNetBackbone(...)` or a
            `PSResNetBackbone`.
        **convert_kwargs: as for `psconv_tf.convert` (predicate, pattern,
            cyclic, layout, dilation_rate, transfer_kernels).

    Returns:
        A `ConvertedBackbone` with the backbone's name, dtype policy, output,
        `pyramid_outputs` levels and (for the layers not converted, or all
        with `transfer_kernels=True`) weights.
    """
    if not isinstance(backbone, FeaturePyramidBackbone):
        raise ValueError(
            "convert_backbone() takes a keras-hub FeaturePyramidBackbone; "
            f"received {type(backbone).__name__}. Use psconv_tf.convert for "
            "other functional models."
        )
    if _OUTPUT in backbone.pyramid_outputs:
        raise ValueError(f"A pyramid level may not be named {_OUTPUT!r}.")
    graph = keras.Model(
        backbone.inputs, {_OUTPUT: backbone.output, **backbone.pyramid_outputs}
    )
    converted = psconv_convert(graph, **convert_kwargs)
    return ConvertedBackbone(converted, dtype=backbone.dtype_policy, name=backbone.name)
