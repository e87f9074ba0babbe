"""Poly-Scale Convolution (PSConv, Li, Yao & Chen, ECCV 2020) for Keras 3.

    from psconv_tf import PSConv2D, models, convert, profile, load_torch
"""

from psconv_tf import models
from psconv_tf.convert import convert
from psconv_tf.dynamic_ps_conv2d import DynamicPSConv2D
from psconv_tf.freeze import freeze
from psconv_tf.inspection import plot_lattice
from psconv_tf.inspection import summary
from psconv_tf.lattice import dilation_matrix
from psconv_tf.native_conv import NativeConv2D
from psconv_tf.profile import profile
from psconv_tf.ps_conv2d import PSConv2D
from psconv_tf.rate_share import RateShareLogger
from psconv_tf.rate_share import rate_shares
from psconv_tf.weights import load_torch

__version__ = "0.1.0"
