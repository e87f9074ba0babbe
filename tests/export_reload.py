"""Serves a SavedModel with TensorFlow alone, as a deployment would.

    python -I tests/export_reload.py SAVED_MODEL IMAGES.npy OUTPUTS.npy

Importing psconv_tf or keras fails in this process, so the SavedModel's
serving signature cannot depend on them.
"""

import sys

# A None entry makes any import of these names fail (and find_spec say
# "not installed"), as in an environment with TensorFlow only.
for _name in ("keras", "psconv_tf"):
    sys.modules[_name] = None

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(saved_model_dir, images_path, outputs_path):
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    outputs = serve(images=tf.constant(np.load(images_path)))
    np.save(outputs_path, outputs["logits"].numpy())


if __name__ == "__main__":
    main(*sys.argv[1:])
