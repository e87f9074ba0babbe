"""Poly-Scale Convolution (PSConv, Li, Yao & Chen, ECCV 2020) for Keras 3.

    from psconv_tf import PSConv2D, models, convert, profile, load_torch

`import psconv_tf` is all that loading what this package saves needs:
`.keras` files and keras-hub presets of its layers, zoo models, keras-hub
classes and training optimizer (see `psconv_tf.saving`; `load_model` says in
one line what is missing, if anything).
"""

from psconv_tf import models
from psconv_tf import saving
from psconv_tf.convert import convert
from psconv_tf.layers.dynamic_ps_conv2d import DynamicPSConv2D
from psconv_tf.freeze import freeze
from psconv_tf.inspection import plot_lattice
from psconv_tf.inspection import summary
from psconv_tf.engine.model_tuning import TuneCallback
from psconv_tf.engine.model_tuning import tune
from psconv_tf.engine.lattice import dilation_matrix
from psconv_tf.layers.native_conv import NativeConv2D
from psconv_tf.profile import profile
from psconv_tf.layers.ps_conv2d import PSConv2D
from psconv_tf.layers.official_ps_conv2d import OfficialPSConv2D
from psconv_tf.rate_share import RateShareLogger
from psconv_tf.rate_share import rate_shares
from psconv_tf.saving import load_model
from psconv_tf.checkpoints.loading import load_torch

__version__ = "0.1.0"

# Last: with keras-hub imported already, this imports psconv_tf.hub, which
# needs the names above.
saving.register_optional_classes()
