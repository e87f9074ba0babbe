"""Export to SavedModel and TFLite: parity with Keras, operators, errors.

Outputs are compared with Keras (float32, inference mode) on the same
images, preprocessed independently in NumPy. Relative error of outputs `a`
against the Keras outputs `b`: max |a - b| / max |b|, over the whole batch.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from export_data import BUILTIN_OPERATORS
from export_data import analyzed_operators
from export_data import image_set
from export_data import run_tflite
from export_data import tiny_ps_resnet
from psconv_tf import export
from psconv_tf import models
from psconv_tf.training import configs
from psconv_tf.runtime import run_config
from psconv_tf.runtime.run_config import Preprocessing
from psconv_tf.runtime.run_config import RunConfig

RELOAD_SCRIPT = os.path.join(os.path.dirname(__file__), "export_reload.py")


def relative_error(outputs, reference):
    return float(np.max(np.abs(outputs - reference)) / np.max(np.abs(reference)))


def normalized(images, mean, std):
    """(images / 255 - mean) / std in float64, then float32 for Keras."""
    return ((images / 255.0 - np.asarray(mean)) / np.asarray(std)).astype("float32")


def test_float_tflite_matches_keras_with_builtin_operators(tmp_path):
    model = models.get("ps_cifar_resnet20")
    saved_model = export.export_saved_model(
        model, str(tmp_path / "saved_model"), input_dtype="uint8",
        normalization="imagenet",
    )
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
    reference = model(
        normalized(images, export.IMAGENET_MEAN, export.IMAGENET_STD), training=False
    ).numpy()

    float32 = export.convert_to_tflite(saved_model, "float32")
    float16 = export.convert_to_tflite(saved_model, "float16")
    float32_error = relative_error(run_tflite(float32, images), reference)
    float16_error = relative_error(run_tflite(float16, images), reference)
    print(f"ps_cifar_resnet20 relative error: float32 {float32_error:.2e}, "
          f"float16 {float16_error:.2e}")
    assert float32_error <= 1e-5
    assert float16_error <= 1e-2

    operators = {name for name, _ in analyzed_operators(float32)}
    print("ps_cifar_resnet20 float32 operators:", sorted(operators))
    assert operators <= BUILTIN_OPERATORS
    assert "CONV_2D" in operators
    assert sorted(operators) == export.tflite_operators(float32)


def train_tiny_ps_resnet(images, labels, mean, std, epochs=3, batch_size=64):
    keras.utils.set_random_seed(0)
    model = tiny_ps_resnet(width=32)
    steps = epochs * -(-len(images) // batch_size)
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    model.fit(
        normalized(images, mean, std), labels, batch_size=batch_size,
        epochs=epochs, verbose=0,
    )
    return model


def test_int8_agrees_with_float_model(tmp_path, record_property):
    data = image_set(train_count=4500, test_count=5000)
    print(f"int8 data set: {data.name}")
    record_property("int8_dataset", data.name)
    train_images = data.train_images[:4000]
    calibration_images = data.train_images[4000:]
    mean = float(np.mean(train_images / 255.0))
    std = float(np.std(train_images / 255.0))
    model = train_tiny_ps_resnet(train_images, data.train_labels[:4000], mean, std)
    np.save(tmp_path / "calibration.npy", calibration_images)
    paths = export.export(
        model, str(tmp_path), formats=["int8", "dynamic_int8"],
        representative_data=str(tmp_path / "calibration.npy"), num_samples=500,
        input_dtype="uint8", normalization=((mean,), (std,)),
    )
    float_labels = model.predict(
        normalized(data.test_images, mean, std), batch_size=500, verbose=0
    ).argmax(1)
    accuracy = np.mean(float_labels == data.test_labels)

    with open(paths["int8"], "rb") as file:
        int8 = file.read()
    int8_outputs = run_tflite(int8, data.test_images)  # uint8 pixels in
    int8_agreement = np.mean(int8_outputs.argmax(1) == float_labels)
    # 8-bit logits can tie: how often the float class is among the top ones.
    rows = np.arange(len(float_labels))
    tied_agreement = np.mean(int8_outputs[rows, float_labels] == int8_outputs.max(1))
    with open(paths["dynamic_int8"], "rb") as file:
        dynamic = file.read()
    dynamic_agreement = np.mean(
        run_tflite(dynamic, data.test_images).argmax(1) == float_labels
    )
    print(f"{data.name}: float accuracy {accuracy:.4f}; top-1 agreement with "
          f"float: int8 {int8_agreement:.4f} ({tied_agreement:.4f} counting "
          f"ties), dynamic_int8 {dynamic_agreement:.4f}")
    record_property("int8_agreement", float(int8_agreement))
    assert accuracy > 0.6  # Trained: the agreement is about real decisions.
    assert int8_agreement >= 0.98
    assert dynamic_agreement >= 0.98
    # Integer-only: every convolution and the classifier take int8.
    for name, input_types in analyzed_operators(int8):
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            assert input_types[0] == "INT8", (name, input_types)
    assert export.float_operators(int8) == []


def test_saved_model_serves_with_tensorflow_alone(tmp_path):
    model = tiny_ps_resnet()
    saved_model = export.export_saved_model(
        model, str(tmp_path / "saved_model"), input_size=(36, 40)
    )
    images = np.random.default_rng(1).normal(size=(4, 36, 40, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    subprocess.run(
        [sys.executable, "-I", RELOAD_SCRIPT, saved_model,
         str(tmp_path / "images.npy"), str(tmp_path / "outputs.npy")],
        check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    resized = tf.image.resize(images, (28, 28), method="bilinear")
    reference = model(resized, training=False).numpy()
    assert relative_error(np.load(tmp_path / "outputs.npy"), reference) <= 1e-5


def test_run_directory_exports_best_model(tmp_path):
    # A run directory as training/ writes it: best.keras and config.json.
    model = tiny_ps_resnet(input_shape=(None, None, 1))
    model.save(tmp_path / "best.keras")
    mean, std = 70.0, 90.0  # pixel units, as config.json holds them
    config = RunConfig(model="ps_cifar_resnet20", num_classes=10, image_size=28, channels=1,
                       recipe=configs.QUICK, dataset="fashion_mnist",
                       preprocessing=Preprocessing(mean=[mean], std=[std]))
    run_config.write_config(str(tmp_path), config)
    paths = export.export(
        str(tmp_path), str(tmp_path / "out"), formats=["saved_model"],
        input_dtype="uint8", normalization="auto",
    )
    serve = tf.saved_model.load(paths["saved_model"]).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, 28, 28, 1] and spec.dtype == tf.uint8
    images = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 1), np.uint8)
    reference = model(((images - mean) / std).astype("float32"), training=False)
    outputs = serve(images=tf.constant(images))["logits"].numpy()
    assert relative_error(outputs, reference.numpy()) <= 1e-5


def test_representative_data_from_directory(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 30, 20, 3), np.uint8)
    for index, image in enumerate(images):
        (tmp_path / f"{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    dataset = export.representative_dataset(str(tmp_path), (15, 10, 3), num_samples=2)
    samples = [sample[0] for sample in dataset()]
    assert len(samples) == 2
    expected = tf.image.resize(images.astype("float32"), (15, 10)).numpy()
    for sample in samples:
        assert sample.shape == (1, 15, 10, 3)
        assert min(np.abs(sample[0] - e).max() for e in expected) < 1e-3


def test_representative_data_from_array_and_callable():
    images = np.random.default_rng(4).integers(0, 256, (5, 4, 4, 1), np.uint8)
    from_array = export.representative_dataset(images, (4, 4, 1), num_samples=3)
    from_callable = export.representative_dataset(
        lambda: [images[:2], images[2:]], (4, 4, 1)
    )
    assert [s[0].dtype for s in from_array()] == [np.float32] * 3
    np.testing.assert_array_equal(
        np.concatenate([s[0] for s in from_callable()]), images.astype(np.float32)
    )
    with pytest.raises(ValueError, match=r"shape \(8, 8, 1\)"):
        export.representative_dataset(images, (8, 8, 1))


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--help"])
    assert exit_info.value.code == 0
    assert "--representative-data" in capsys.readouterr().out

    model_path = tmp_path / "model.keras"
    tiny_ps_resnet().save(model_path)
    export.main([
        str(model_path), str(tmp_path / "out"), "--formats", "saved_model,float32",
        "--input-dtype", "uint8", "--normalize", "--mean", "0.5", "--std", "0.25",
    ])
    printed = capsys.readouterr().out
    assert "float32: " in printed
    assert os.path.isfile(tmp_path / "out" / "model_float32.tflite")

    with pytest.raises(SystemExit) as exit_info:
        export.main([str(model_path), str(tmp_path / "out"), "--formats", "tflite"])
    assert exit_info.value.code == 2
    assert "formats" in capsys.readouterr().err


def test_interrupted_export_keeps_previous_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    model = tiny_ps_resnet()
    export.export(model, str(out), formats=["float32"])
    previous = {path: (out / path).read_bytes() for path in ("model_float32.tflite",
                                                              "saved_model/saved_model.pb")}
    archive_class = type(keras.export.ExportArchive())  # the backend's
    write_out = archive_class.write_out

    def killed_while_writing(self, directory, *args, **kwargs):
        write_out(self, directory, *args, **kwargs)
        os.remove(os.path.join(directory, "saved_model.pb"))  # not yet written
        raise KeyboardInterrupt

    monkeypatch.setattr(archive_class, "write_out", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        export.export(model, str(out), formats=["float32"], input_dtype="uint8")
    for path, content in previous.items():
        assert (out / path).read_bytes() == content
    assert sorted(os.listdir(out)) == ["model_float32.tflite", "saved_model"]
    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    assert serve.structured_input_signature[1]["images"].dtype == tf.float32


def _signature_outputs(flatbuffer):
    return Interpreter(model_content=flatbuffer).get_signature_list()["serving_default"]


def test_signature_outputs_are_named(tmp_path):
    # The zoo's classifiers end in a Dense without activation: logits.
    paths = export.export(tiny_ps_resnet(), str(tmp_path / "zoo"), formats=["float32"])
    serve = tf.saved_model.load(paths["saved_model"]).signatures["serving_default"]
    assert list(serve.structured_outputs) == ["logits"]
    with open(paths["float32"], "rb") as file:
        assert _signature_outputs(file.read()) == {"inputs": ["images"], "outputs": ["logits"]}
    # A model ending in a softmax keeps its output's name; dict outputs their keys.
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    softmax = keras.layers.Dense(3, activation="softmax", name="predictions")(features)
    assert export.output_names(keras.Model(inputs, softmax)) == ["predictions"]
    pair = keras.Model(inputs, {"embedding": features, "scores": softmax})
    saved_model = export.export_saved_model(pair, str(tmp_path / "pair"))
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    assert sorted(serve.structured_outputs) == ["embedding", "scores"]


def test_int8_file_takes_and_returns_integers(tmp_path):
    keras.utils.set_random_seed(1)
    model = tiny_ps_resnet(width=8)
    images = np.random.default_rng(6).normal(size=(16, 28, 28, 1)).astype("float32")
    saved_model = export.export_saved_model(model, str(tmp_path / "saved_model"))
    int8 = export.convert_to_tflite(saved_model, "int8", images, num_samples=16)
    details = Interpreter(model_content=int8).get_signature_runner()
    assert details.get_input_details()["images"]["dtype"] == np.int8
    assert details.get_output_details()["logits"]["dtype"] == np.int8
    assert export.float_operators(int8) == []
    scale, zero_point = export.io_quantization(int8)["output"]
    assert scale > 0 and -128 <= zero_point <= 127
    # Dequantized, the integer outputs follow the float model.
    reference = model(images, training=False).numpy()
    assert relative_error(run_tflite(int8, images), reference) <= 0.1


def test_keras_litert_export_of_a_ps_model(tmp_path):
    """Keras's own LiteRT export converts PS models as they are: builtin
    operators, outputs as Keras's (what the README recommends it for)."""
    model = tiny_ps_resnet()
    model.export(str(tmp_path / "model.tflite"), format="litert", verbose=False)
    with open(tmp_path / "model.tflite", "rb") as file:
        flatbuffer = file.read()
    assert set(export.tflite_operators(flatbuffer)) <= BUILTIN_OPERATORS
    images = np.random.default_rng(7).normal(size=(2, 28, 28, 1)).astype("float32")
    runner = Interpreter(model_content=flatbuffer).get_signature_runner()
    (input_name,) = runner.get_input_details()
    outputs = np.concatenate([next(iter(runner(**{input_name: image[None]}).values()))
                              for image in images])
    assert relative_error(outputs, model(images, training=False).numpy()) <= 1e-5
