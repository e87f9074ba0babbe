"""RetinaNet and DeepLabV3 on a PS backbone: build, one training step, save,
reload, same outputs; training/coco.py end to end on generated data."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest

from psconv_tf import hub
from psconv_tf.detection import retinanet
from psconv_tf.detection import segmentation
from psconv_tf.detection import synthetic
from psconv_tf.training import cli
from torch_layout import state_dict_of

SIZE = 64
TINY = dict(stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_filters=[8, 8, 16, 16],
            stem_filters=8, conv="psconv")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(batch=2):
    return np.random.default_rng(0).uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype("float32")


def _same_outputs(a, b, x):
    ya, yb = a(x), b(x)
    for key in (ya if isinstance(ya, dict) else [None]):
        pa, pb = (ya[key], yb[key]) if key else (ya, yb)
        np.testing.assert_array_equal(pa, pb)


def _weights_moved(model, step):
    before = [np.array(v.numpy()) for v in model.trainable_weights]
    step()
    return any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_weights))


def test_retinanet_trains_saves_and_reloads(tmp_path):
    backbone = hub.PSResNetBackbone(**TINY, frozen_stages=1, norm_eval=True)
    detector = retinanet.build_detector(backbone, num_classes=3, head_convs=1)
    detector.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    x = _images()
    y = dict(boxes=np.array([[[4, 4, 30, 30], [-1, -1, -1, -1]],
                             [[10, 20, 50, 60], [0, 0, 20, 20]]], "float32"),
             labels=np.array([[0, -1], [1, 2]], "int32"))
    assert _weights_moved(detector, lambda: detector.fit(x, y, batch_size=2, epochs=1, verbose=0))
    detector.save(tmp_path / "detector.keras")
    _same_outputs(detector, keras.saving.load_model(tmp_path / "detector.keras"), x)
    detector.save_to_preset(tmp_path / "preset")
    loaded = keras_hub.models.ObjectDetector.from_preset(str(tmp_path / "preset"))
    assert type(loaded.backbone.image_encoder) is hub.PSResNetBackbone
    _same_outputs(detector, loaded, x)


def test_deeplab_trains_saves_and_reloads(tmp_path):
    backbone = hub.PSResNetBackbone(**TINY, image_shape=(SIZE, SIZE, 3))
    segmenter = segmentation.build_segmenter(backbone, num_classes=4)
    segmenter.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _images()
    masks = np.random.default_rng(1).integers(0, 4, (2, SIZE, SIZE, 1))
    assert _weights_moved(segmenter, lambda: segmenter.fit(x, masks, epochs=1, verbose=0))
    assert segmenter(x).shape == (2, SIZE, SIZE, 4)
    segmenter.save(tmp_path / "segmenter.keras")
    _same_outputs(segmenter, keras.saving.load_model(tmp_path / "segmenter.keras"), x)
    segmenter.save_to_preset(tmp_path / "preset")
    _same_outputs(segmenter, keras_hub.models.ImageSegmenter.from_preset(str(tmp_path / "preset")), x)


def test_schedule_is_the_1x_schedule():
    from psconv_tf.training import configs
    from psconv_tf.training.schedules import learning_rate_schedule

    rate = learning_rate_schedule(dataclasses.replace(configs.COCO_1X, batch_size=32), 100)
    # Linear scaling (0.01 at 16 -> 0.02), MMDetection's linear warm-up from 1/3 of
    # it over 500 steps: 1 - (1 - i / 500) * (1 - 1/3).
    for step, expected in ((0, 0.02 / 3), (100, 0.02 * 7 / 15), (250, 0.02 * 2 / 3),
                           (499, 0.02 * (1 - 1 / 750)), (500, 0.02),
                           (799, 0.02), (800, 0.002), (1099, 0.002), (1100, 0.0002)):
        assert float(rate(step)) == pytest.approx(expected, rel=1e-5), step


def _coco_script():
    spec = importlib.util.spec_from_file_location("coco_script", os.path.join(REPO, "training", "coco.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coco_script_documents_every_flag():
    parser = _coco_script().build_parser()
    flags = [action for action in parser._actions if action.option_strings != ["-h", "--help"]]
    assert len(flags) >= 27
    for action in flags:
        assert action.help and len(action.help) > 10, action.option_strings
    text = parser.format_help()
    for flag in ("--data-dir", "--annotations", "--backbone-weights", "--frozen-stages",
                 "--norm-eval", "--decay-epochs", "--min-size", "--max-size", "--no-flip",
                 "--strategy", "--precision", "--jit-compile", "--eval-only"):
        assert flag in text, flag


def test_coco_script_runs_end_to_end(tmp_path):
    paths = synthetic.generate(tmp_path / "data", train_images=4, val_images=2, image_size=64,
                               min_size=8, max_size=30)
    (train_json, train_dir, _), (val_json, val_dir, _) = paths["train"], paths["val"]
    run_dir = tmp_path / "run"
    command = [sys.executable, os.path.join(REPO, "training", "coco.py"),
               "--annotations", train_json, "--images", train_dir,
               "--val-annotations", val_json, "--val-images", val_dir,
               "--model", "resnet18", "--min-size", "64", "--max-size", "64",
               "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "1",
               "--head-convs", "1", "--run-dir", str(run_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "box AP" in result.stdout
    # Strict JSON: an AP without objects of its size (none is large here) is null.
    metrics = json.loads((run_dir / "metrics.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))
    assert set(metrics["final"]) == {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"}
    assert metrics["final"]["AP_L"] is None and metrics["monitor"] == "AP"
    assert sorted(os.listdir(run_dir)) == ["backup", "best.keras", "config.json", "log.jsonl",
                                           "logs", "metrics.json", "psconv_run.json"]
    # A bad flag value is one line naming the flag, before any data is read.
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(_coco_script().main, command[2:-2] + ["--run-dir", str(run_dir),
                                                           "--decay-epochs", "5"])
    assert str(exit_info.value.code).startswith("error: --decay-epochs: must be increasing "
                                                "epochs in (0, 1)")


def test_backbone_weights_from_a_keras_file(tmp_path):
    from psconv_tf import models

    zoo = models.get("ps_resnet18", input_shape=(SIZE, SIZE, 3), num_classes=3)
    zoo.save(tmp_path / "zoo.keras")
    backbone = hub.PSResNetBackbone.from_zoo("ps_resnet18", image_shape=(SIZE, SIZE, 3))
    retinanet.load_backbone_weights(backbone, tmp_path / "zoo.keras")
    features = keras.Model(zoo.inputs, zoo.get_layer("layer4_1_out").output)
    np.testing.assert_array_equal(backbone(_images()), features(_images()))
    other = hub.PSResNetBackbone.from_zoo("ps_resnet34", image_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="no layer 'layer1_2_conv1'"):
        retinanet.load_backbone_weights(other, tmp_path / "zoo.keras")


def test_segmentation_example_trains_on_generated_files(tmp_path):
    paths = synthetic.generate(tmp_path, train_images=4, val_images=2, image_size=SIZE,
                               min_size=8, max_size=30)
    _, image_dir, mask_dir = paths["train"]
    batches = segmentation.dataset(image_dir, mask_dir, SIZE, 2, training=True)
    images, masks = next(iter(batches))
    assert images.shape == (2, SIZE, SIZE, 3) and masks.shape == (2, SIZE, SIZE, 1)
    assert set(np.unique(masks)) <= set(range(segmentation.NUM_CLASSES))
    segmenter = segmentation.build_segmenter(
        hub.PSResNetBackbone(**TINY, image_shape=(SIZE, SIZE, 3)))
    segmenter.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    segmenter.fit(batches, epochs=1, verbose=0)  # the file pipeline, statically shaped
    assert 0.0 <= segmentation.mean_iou(segmenter, batches) <= 1.0


def test_mean_iou_against_counts():
    class Constant:  # predicts class 1 everywhere
        def __call__(self, images, training=False):
            return np.eye(3)[np.ones(images.shape[:3], int)]

    masks = np.array([[[[1], [1]], [[0], [2]]]])
    # class 0: I 0 / U 1; class 1: I 2 / U 4; class 2: I 0 / U 1 -> (0 + 0.5 + 0) / 3.
    iou = segmentation.mean_iou(Constant(), [(np.zeros((1, 2, 2, 3)), masks)], num_classes=3)
    assert iou == pytest.approx(0.5 / 3)


def _zoo_and_features(name):
    from psconv_tf import models

    zoo = models.get(name, input_shape=(SIZE, SIZE, 3), num_classes=3)
    return zoo, keras.Model(zoo.inputs, zoo.get_layer("layer4_1_out").output)


def _backbone(name):
    return hub.PSResNetBackbone.from_zoo(name, image_shape=(SIZE, SIZE, 3))


def _snapshot(model):
    return [w.numpy() for w in model.weights]


def _unchanged(model, snapshot):
    return all(np.array_equal(w.numpy(), s)
               for w, s in zip(model.weights, snapshot))


def test_backbone_weights_from_a_pth_with_wrapped_keys(tmp_path):
    import torch

    zoo, features = _zoo_and_features("resnet18")
    state = {"model." + key: torch.from_numpy(value) for key, value in state_dict_of(zoo).items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "lightning.pth")
    backbone = _backbone("resnet18")
    retinanet.load_backbone_weights(backbone, tmp_path / "lightning.pth")
    np.testing.assert_allclose(backbone(_images()), features(_images()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep, message", [
    (lambda key: key.startswith(("conv1.", "bn1.", "layer1.")), "less than 50 %"),
    (lambda key: True, "assign none of the model's"),
], ids=["stem-and-layer1-only", "unknown-names"])
def test_backbone_weights_refuse_a_pth_that_fills_too_little(tmp_path, keep, message):
    import torch

    zoo, _ = _zoo_and_features("resnet18")
    state = {key: torch.from_numpy(value) for key, value in state_dict_of(zoo).items()
             if keep(key)}
    if message.startswith("assign none"):
        state = {"net" + key: value for key, value in state.items()}  # netconv1.weight, ...
    torch.save(state, tmp_path / "partial.pth")
    backbone = _backbone("resnet18")
    before = _snapshot(backbone)
    with pytest.raises(ValueError, match=message):
        retinanet.load_backbone_weights(backbone, tmp_path / "partial.pth")
    assert _unchanged(backbone, before)


def test_backbone_weights_refuse_another_conv_type(tmp_path):
    import torch

    zoo, _ = _zoo_and_features("resnet18")
    zoo.save(tmp_path / "standard.keras")
    torch.save({k: torch.from_numpy(v) for k, v in state_dict_of(zoo).items()},
               tmp_path / "standard.pth")
    backbone = _backbone("ps_resnet18")
    before = _snapshot(backbone)
    with pytest.raises(ValueError, match="layer1_0_conv1' is a Conv2D there and a PSConv2D"):
        retinanet.load_backbone_weights(backbone, tmp_path / "standard.keras")
    with pytest.raises(ValueError, match=r"Conv types differ in: layer1_0_conv1 \(checkpoint: "
                                         r"standard conv, model: PSConv2D\)"):
        retinanet.load_backbone_weights(backbone, tmp_path / "standard.pth")
    assert _unchanged(backbone, before)


def test_backbone_weights_refuse_other_rates_and_extra_layers(tmp_path):
    from psconv_tf import models

    other = models.get("ps_resnet18", input_shape=(SIZE, SIZE, 3), num_classes=3,
                       pattern=(1, 3))
    other.save(tmp_path / "other_rates.keras")
    backbone = _backbone("ps_resnet18")
    with pytest.raises(ValueError, match="layer1_0_conv1' has other rates there"):
        retinanet.load_backbone_weights(backbone, tmp_path / "other_rates.keras")
    # A layer added beside a backbone layer, as masked="compat" does.
    zoo, _ = _zoo_and_features("ps_resnet18")
    conv = zoo.get_layer("layer1_0_conv1")
    extra = keras.layers.Conv2D(conv.filters, 3, padding="same", name="layer1_0_conv1_masked")
    graph = keras.models.clone_model(
        zoo, clone_function=lambda layer: layer,
        call_function=lambda layer, *args, **kwargs: (
            keras.layers.Add()([layer(*args, **kwargs), extra(args[0])])
            if layer is conv else layer(*args, **kwargs)),
    )
    graph.save(tmp_path / "compat.keras")
    before = _snapshot(backbone)
    with pytest.raises(ValueError, match="weighted layers that the backbone lacks "
                                         r"\(layer1_0_conv1_masked\)"):
        retinanet.load_backbone_weights(backbone, tmp_path / "compat.keras")
    assert _unchanged(backbone, before)


def test_backbone_weights_from_a_run_folder(tmp_path):
    zoo, features = _zoo_and_features("ps_resnet18")
    (tmp_path / "run").mkdir()
    zoo.save(tmp_path / "run" / "best.keras")
    backbone = _backbone("ps_resnet18")
    retinanet.load_backbone_weights(backbone, tmp_path / "run")
    np.testing.assert_array_equal(backbone(_images()), features(_images()))
