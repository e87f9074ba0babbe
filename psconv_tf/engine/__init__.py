"""The engine: one poly-scale convolution, no Keras layer.

`lattice` builds the cyclic dilation lattice of Eq. 3, `executor` and `rate_conv`
turn it into plans of ordinary convolutions (`conv_ops` is their one call site),
`fused_*` is the single-kernel plan for JAX, `autotune` picks a plan per layer.
Modules here import only each other (downward) and never a Keras layer.
"""
