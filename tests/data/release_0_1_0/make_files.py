"""Writes the files of this folder; run with psconv-tf 0.1.0 installed:

    PSCONV_TF_AUTOTUNE=0 python make_files.py tests/data/release_0_1_0
"""
import os, sys, json
import numpy as np
import keras
import psconv_tf
from psconv_tf import PSConv2D, DynamicPSConv2D, NativeConv2D
from psconv_tf.models.resnet import ResNet, Stage
from psconv_tf.training import CoupledWeightDecaySGD
from psconv_tf import hub

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)

# 1. Every layer of the package in one functional model, compiled with the
# package's optimizer.
inputs = keras.Input((12, 12, 8))
x = PSConv2D(8, 3, padding="same", name="ps")(inputs)
x = PSConv2D(8, 3, padding="same", groups=2, dilation_matrix="8x4:1*12,2*8,4*12", name="explicit")(x)
x = PSConv2D(8, 3, strides=2, padding="symmetric", pattern=(1, 2), layout="interleaved", name="strided")(x)
x = DynamicPSConv2D(8, 3, padding="same", name="dynamic", mask_initializer="random")(x)
x = NativeConv2D(8, 3, padding="same", groups=2, name="native")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
outputs = keras.layers.Dense(3, name="head")(x)
model = keras.Model(inputs, outputs, name="layers")
model.compile(optimizer=CoupledWeightDecaySGD(0.1, momentum=0.9, coupled_weight_decay=1e-4),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
images = rng.normal(size=(2, 12, 12, 8)).astype("float32")
model.fit(images, np.array([0, 2]), epochs=1, verbose=0)  # optimizer state and moved masks
model.save(os.path.join(out, "layers.keras"))
np.save(os.path.join(out, "layers_input.npy"), images)
np.save(os.path.join(out, "layers_output.npy"), keras.ops.convert_to_numpy(model(images)))

# 2. A zoo graph with feature maps (named C2-C5 by this release).
zoo = ResNet([Stage(1, 4, 1), Stage(1, 8, 2), Stage(1, 8, 2), Stage(1, 8, 2)], block="bottleneck",
             stem_filters=8, width_per_group=64, conv="psconv", include_top=False,
             feature_maps=True, input_shape=(32, 32, 3), name="tiny_ps_resnet")
zoo.save(os.path.join(out, "feature_maps.keras"))
pixels = rng.normal(size=(1, 32, 32, 3)).astype("float32")
np.save(os.path.join(out, "feature_maps_input.npy"), pixels)
np.savez(os.path.join(out, "feature_maps_output.npz"),
         **{k: keras.ops.convert_to_numpy(v) for k, v in zoo(pixels).items()})

# 3. keras-hub presets: a backbone and a classifier.
backbone = hub.PSResNetBackbone(stackwise_num_blocks=(1, 1, 1, 1), stackwise_num_filters=(4, 8, 8, 8),
                                stem_filters=8, conv="psconv", name="tiny_backbone")
backbone.save_to_preset(os.path.join(out, "backbone_preset"))
np.savez(os.path.join(out, "backbone_output.npz"),
         **{k: keras.ops.convert_to_numpy(v) for k, v in
            keras.Model(backbone.inputs, backbone.pyramid_outputs)(pixels).items()})
classifier = hub.PSResNetImageClassifier(backbone=backbone, num_classes=5)
classifier.save_to_preset(os.path.join(out, "classifier_preset"))
classifier.save(os.path.join(out, "classifier.keras"))
np.save(os.path.join(out, "classifier_output.npy"), keras.ops.convert_to_numpy(classifier(pixels)))
print("written", sorted(os.listdir(out)))
