"""Poly-Scale Convolution (PSConv, Li, Yao & Chen, ECCV 2020) for Keras 3.

    from psconv_tf import PSConv2D, models, convert, profile, load_torch
"""

from psconv_tf import models
from psconv_tf.convert import convert
from psconv_tf.inspection import plot_lattice
from psconv_tf.inspection import summary
from psconv_tf.lattice import dilation_matrix
from psconv_tf.native_conv import NativeConv2D
from psconv_tf.profile import profile
from psconv_tf.ps_conv2d import PSConv2D
from psconv_tf.weights import load_torch

__version__ = "0.1.0"
