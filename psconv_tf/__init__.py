"""Poly-Scale Convolution (PSConv) for Keras 3 and TensorFlow."""

from psconv_tf.lattice import dilation_matrix
from psconv_tf.ps_conv2d import PSConv2D

__version__ = "0.1.0"
