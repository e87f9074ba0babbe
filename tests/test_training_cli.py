"""One vocabulary for every command line: the shared flags' names, defaults
and help, and the flags refused where they would change nothing."""

import argparse

import pytest

import training_helpers
from psconv_tf import models
from psconv_tf.detection import segmentation
from psconv_tf.runtime.errors import InputError
from psconv_tf.training import cli

pytestmark = pytest.mark.tensorflow

SCRIPTS = {name: training_helpers.load_script(name)
           for name in ("imagenet", "cifar", "quick_run", "coco")}
# The batch each script's --learning-rate is given at.
REFERENCE_BATCH = {"imagenet": 256, "cifar": 128, "quick_run": 128, "coco": 16,
                   "segmentation": 16}


def _parsers():
    return {**{name: script.build_parser() for name, script in SCRIPTS.items()},
            "segmentation": segmentation.build_parser()}


def _parse(name, argv):
    required = ["--data-dir", "unused"] if name == "segmentation" else []
    return _parsers()[name].parse_args(required + argv)


def _action(parser, flag):
    (action,) = [action for action in parser._actions if flag in action.option_strings]
    return action


@pytest.mark.parametrize("name", ["imagenet", "cifar", "quick_run", "coco", "segmentation"])
def test_verbose_is_1_by_default_everywhere(name):
    action = _action(_parsers()[name], "--verbose")
    assert action.default == 1 and action.choices == (0, 1, 2)


@pytest.mark.parametrize("name", sorted(REFERENCE_BATCH))
def test_learning_rate_help_names_its_batch(name):
    text = _action(_parsers()[name], "--learning-rate").help
    assert f"at batch {REFERENCE_BATCH[name]}, scaled linearly with --batch-size" in text


@pytest.mark.parametrize("name", ["imagenet", "cifar", "quick_run", "coco", "segmentation"])
def test_help_shows_every_default(name):
    for action in _parsers()[name]._actions:
        if action.help in (None, argparse.SUPPRESS) or action.default is None:
            continue  # an optional value: absent by default
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction,
                               argparse._StoreFalseAction)):
            continue
        shown = "default" in action.help or "required" in action.help
        assert shown, (name, action.option_strings, action.help)


@pytest.mark.parametrize("name", sorted(REFERENCE_BATCH))
def test_decay_epochs_is_the_one_name(name, capsys):
    assert _parse(name, ["--decay-epochs", "2,3"]).decay_epochs == (2, 3)
    with pytest.raises(SystemExit) as exit_info:
        _parse(name, ["--milestones", "8,11"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: argument --milestones: is now --decay-epochs (same values)")


@pytest.mark.parametrize("name", ["imagenet", "cifar", "coco", "segmentation"])
@pytest.mark.parametrize("flags, argument", [
    (["--pattern", "1,2"], "pattern"), (["--cyclic", "input"], "cyclic"),
    (["--mask-lr-multiplier", "10"], "mask_lr_multiplier")])
def test_model_flags_that_would_change_nothing_are_refused(name, flags, argument):
    args = _parse(name, ["--model", "resnet18", *flags])
    with pytest.raises(InputError) as error:
        cli.model_kwargs_from_args(args)
    assert error.value.argument == argument
    assert "only, not resnet18" in str(error.value)
    assert "\n" not in cli.error_message(error.value)


def test_ps_models_keep_their_default_pattern():
    args = SCRIPTS["imagenet"].build_parser().parse_args(["--model", "ps_resnet18"])
    assert cli.model_kwargs_from_args(args) == {"pattern": [1, 2, 1, 4], "cyclic": "both"}
    args = SCRIPTS["imagenet"].build_parser().parse_args(["--model", "resnet18"])
    assert cli.model_kwargs_from_args(args) == {}


def test_the_mask_learning_rate_multiplier_reaches_the_dynamic_layers():
    args = SCRIPTS["cifar"].build_parser().parse_args(
        ["--model", "dps_cifar_resnet20", "--mask-lr-multiplier", "100"])
    kwargs = cli.model_kwargs_from_args(args)
    assert kwargs == {"dynamic_options": {"mask_learning_rate_multiplier": 100.0}}
    model = models.get("dps_cifar_resnet20", num_classes=10, input_shape=(32, 32, 3), **kwargs)
    multipliers = {layer.mask_learning_rate_multiplier for layer in _layers(model)
                   if hasattr(layer, "mask_learning_rate_multiplier")}
    assert multipliers == {100.0}
    with pytest.raises(InputError, match="only, not ps_cifar_resnet20"):
        cli.model_kwargs_from_args(SCRIPTS["cifar"].build_parser().parse_args(
            ["--model", "ps_cifar_resnet20", "--mask-lr-multiplier", "100"]))


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def test_a_standard_model_s_run_of_an_earlier_release_replays(tmp_path):
    """Earlier releases stored --pattern's and --cyclic's defaults for every
    model: replaying such a run of a standard model is not refused."""
    from psconv_tf.training import configs
    from psconv_tf.runtime import run_config

    config = training_helpers.tiny_run_config(
        configs.CIFAR, model="cifar_resnet20", script="cifar",
        arguments={"model": "cifar_resnet20", "pattern": [1, 2, 1, 4], "cyclic": "both"})
    run_config.write_config(str(tmp_path), config)
    args = cli.parse_args(SCRIPTS["cifar"].build_parser(),
                          ["--config", str(tmp_path / "config.json")], "cifar")
    assert args.model == "cifar_resnet20" and cli.model_kwargs_from_args(args) == {}


@pytest.mark.parametrize("name", ["coco", "segmentation"])
def test_backbone_scripts_refuse_the_mask_multiplier_they_cannot_pass(name, tmp_path):
    main = segmentation.main if name == "segmentation" else SCRIPTS[name].main
    argv = ["--data-dir", str(tmp_path / "data"), "--model", "dps_resnet18",
            "--mask-lr-multiplier", "10", "--run-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, argv)
    assert str(exit_info.value.code).startswith(
        "error: --mask-lr-multiplier: the keras-hub backbone (PSResNetBackbone) does not take it")
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()
