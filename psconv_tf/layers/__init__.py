"""Keras layers: `PSConv2D`, `DynamicPSConv2D` and the conv layers the zoo needs."""
