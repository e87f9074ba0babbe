import keras
import pytest

TENSORFLOW = keras.backend.backend() == "tensorflow"


def pytest_collection_modifyitems(config, items):
    """Skips the tests marked `tensorflow` under other Keras backends."""
    skip = pytest.mark.skip(reason="TensorFlow backend only")
    for item in items:
        if not TENSORFLOW and item.get_closest_marker("tensorflow"):
            item.add_marker(skip)


if TENSORFLOW:
    import tensorflow as tf

    # Two logical CPUs, so tf.distribute strategies have replicas to mirror.
    # This must happen before TensorFlow initializes its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
