import os
import sys

import keras

# Lets tests import their float64 references as plain modules.
sys.path.insert(0, os.path.dirname(__file__))

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Two logical CPUs, so tf.distribute strategies have replicas to mirror.
    # This must happen before TensorFlow initializes its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

# Deterministic tests: PSConv2D(implementation="auto") uses its fixed default
# instead of measuring (tests of the tuner turn it back on).
os.environ.setdefault("PSCONV_TF_AUTOTUNE", "0")
