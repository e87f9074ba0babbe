"""PyTorch checkpoints: key mapping, the official layer's maths, and `load_torch`."""
