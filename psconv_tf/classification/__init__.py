"""Image classification on the training driver (TensorFlow only).

Modules, one job each:
- `preprocessing`: ImageNet-style decoding, random-resized crop, central
  crop and normalisation (the paper's §4.1);
- `image_data`: ImageNet-style sources (class folders, TFDS), undecodable
  images skipped and named;
- `small_data`: CIFAR-10/100 and Fashion-MNIST in memory (local files or
  TFDS), their statistics and their pad-crop-flip pipeline;
- `runs`: training a zoo classifier from a `RunConfig` (ImageNet-style or
  small images), steps per epoch;
- `ablations`: the rows of the paper's Tables 3-5 as networks, trained
  through `runs` and printed beside the paper's figures.

Its metrics (loss, top-1, top-5) are the trainer's defaults, in
`psconv_tf.training.metrics`. Imports point down only: classification imports
the trainer, never the reverse; the package imports no module of its own on
import.
"""
