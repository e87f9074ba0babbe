"""RetinaNet anchors at the true stride of every level, for any image size.

keras-hub's `AnchorGenerator` needs the image's height and width as Python
ints (one trace per shape) and spaces the anchors of level l by
H // ceil(H / 2**l), which is 2**l only when H is a multiple of 2**l: on an
800-pixel side, P6's anchors lie 61 pixels apart and P7's 114 where the
features lie 64 and 128 apart. Here level l has ceil(H / 2**l) x
ceil(W / 2**l) anchor centres at (2**l * i, 2**l * j), as the FPN's feature
maps (stride-2 convs, "same" padding) and MMDetection's anchor generator
have them, computed from the image's dynamic shape: images padded to any
multiple of 32 share one trace. The anchors around each centre (3 scales x 3
aspect ratios, sizes and rounding) are keras-hub's.
"""

import keras
import keras_hub
import tensorflow as tf


@keras.saving.register_keras_serializable(package="psconv_tf")
class StrideAnchorGenerator(keras_hub.layers.AnchorGenerator):
    """`keras_hub.layers.AnchorGenerator` with strides 2**level at every
    image size and dynamic image shapes; same arguments and output
    ({"P3": [anchors, 4], ...}, centres in row-major order, then anchors)."""

    def call(self, inputs):
        shape = tf.shape(inputs)
        height, width = shape[-3], shape[-2]
        anchors = {}
        for level in range(self.min_level, self.max_level + 1):
            stride = 2**level
            rows = tf.range((height + stride - 1) // stride, dtype=tf.float32) * stride
            cols = tf.range((width + stride - 1) // stride, dtype=tf.float32) * stride
            y, x = tf.meshgrid(rows, cols, indexing="ij")
            centres = tf.reshape(tf.stack([x, y, x, y], axis=-1), (-1, 1, 4))
            sizes = [int(stride * self.anchor_size * 2 ** (scale / self.num_scales))
                     for scale in range(self.num_scales)]
            around = tf.reshape(self.generate_base_anchors(sizes, self.aspect_ratios), (1, -1, 4))
            anchors[f"P{level}"] = keras.utils.bounding_boxes.convert_format(
                tf.reshape(centres + around, (-1, 4)), source="xyxy",
                target=self.bounding_box_format,
            )
        return anchors
