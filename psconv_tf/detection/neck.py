"""RetinaNet's FPN with PSConv in its 3x3 output convs (the paper's
footnote 4; the authors' `mmdet/models/necks/fpn_psconv.py`).

The authors replace the FPN's 3x3 output conv of every backbone level by
`PSConv(kernel_size=3, padding=1, dilation=2, parts=4)`, which is
`PSConv2D(3, padding="same")` with the paper's pattern (1, 2, 1, 4) and the
official (blocked) layout; the 1x1 lateral convs and the stride-2 convs that
make the coarser levels (P6, P7) stay standard. The paper reports a marginal
gain (Faster R-CNN R-50: box AP 38.4 to 38.6) and keeps the FPN standard in
its tables.
"""

import keras
import keras_hub

from psconv_tf.layers.ps_conv2d import PSConv2D

NECKS = ("standard", "psconv")


def retinanet_backbone(image_encoder, neck="standard", dtype=None):
    """keras-hub's `RetinaNetBackbone` (P3-P7, P6 from C5) on `image_encoder`,
    its FPN's 3x3 output convs standard or, for neck="psconv", PSConv."""
    if neck not in NECKS:
        raise ValueError(f"neck must be one of {NECKS}. Received: {neck!r}")
    cls = PSRetinaNetBackbone if neck == "psconv" else keras_hub.models.RetinaNetBackbone
    return cls(image_encoder=image_encoder, min_level=3, max_level=7, use_p5=False, dtype=dtype)


@keras.saving.register_keras_serializable(package="psconv_tf")
class PSRetinaNetBackbone(keras_hub.models.RetinaNetBackbone):
    """`RetinaNetBackbone` whose FPN has PSConv2D (pattern (1, 2, 1, 4)) as
    the 3x3 output conv of every backbone level; same arguments."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _psconv_outputs(self.feature_pyramid)


def _psconv_outputs(fpn):
    """Replaces the built `fpn`'s 3x3 output convs of the backbone levels
    (named output_conv_P*, as keras-hub's `FeaturePyramid` builds them; the
    coarser levels' are coarser_P*) by PSConv2D layers of the same name."""
    fpn._tracker.unlock()  # the layer is built: Keras locks its state then
    try:
        for level, conv in list(fpn.output_conv_layers.items()):
            if not conv.name.startswith("output_conv_"):
                continue
            replacement = PSConv2D(
                conv.filters, 3, padding="same", data_format=conv.data_format,
                kernel_initializer=conv.kernel_initializer,
                bias_initializer=conv.bias_initializer,
                kernel_regularizer=conv.kernel_regularizer,
                bias_regularizer=conv.bias_regularizer,
                dtype=conv.dtype_policy, name=conv.name,
            )
            channels = conv.kernel.shape[2]
            replacement.build((None, None, None, channels) if conv.data_format == "channels_last"
                              else (None, channels, None, None))
            fpn._tracker.untrack(conv)
            fpn.output_conv_layers[level] = replacement
    finally:
        fpn._tracker.lock()
