"""COCO 2017 detection: RetinaNet with an FPN of standard convs on a zoo
backbone (PS or standard), the 1x schedule, pycocotools evaluation.

The paper (Table 7) fine-tunes Mask R-CNN in MMDetection; keras-hub has no
Mask R-CNN, so this is RetinaNet on the same backbones, schedule and
augmentation: SGD 0.9 with coupled weight decay 1e-4, learning rate 0.01 at
16 images (scaled linearly with --batch-size), 500 steps of linear warm-up,
12 epochs with the rate divided by 10 at epochs 8 and 11 (for other --epochs
at 8/12 and 11/12 of them, rounded down: 16 and 22 of 24; --decay-epochs
places them), gradients clipped to norm 35, images resized to
shorter side 800 / longer side at most 1333 with random horizontal flips,
the backbone's stem and first stage frozen and its BatchNorm statistics
fixed. Evaluation: box AP, AP50, AP75, AP_S, AP_M, AP_L (pycocotools).

Data: --data-dir, a TFDS folder with the prepared coco/2017 (nothing is
downloaded; `tfds build coco/2017 --data_dir DIR` prepares it), or COCO-format
files: --annotations/--images and --val-annotations/--val-images. A bad
annotation record is skipped and named; an unusable file stops with one line.

Run folder (default runs/coco), as every training script's: psconv_run.json,
config.json, best.keras (the detector of the best validation AP), backup/,
log.jsonl, logs/ (TensorBoard), metrics.json (AP, AP50, AP75, AP_S, AP_M,
AP_L after every epoch; null for an AP that is undefined). A folder holding
other files is refused (--force-run-dir adds the run's files among them); one
run at a time writes it. Ctrl-C or SIGTERM stops at the next step, saving a
backup; rerunning the same command (or after a kill) resumes at the step of
the last backup; a rerun with other settings is refused, naming them; a
finished run is left as it is. --config RUN/config.json replays a run's
settings; --eval-only evaluates a run's best.keras on the validation data
alone.

    python training/coco.py --data-dir /data/tfds --model ps_resnet50 \\
        --backbone-weights ps_resnet50.pth --run-dir runs/retinanet_ps_r50
"""

import argparse

from psconv_tf.detection import input_pipeline
from psconv_tf.detection import task
from psconv_tf.training import cli
from psconv_tf.training import configs
from psconv_tf.training import schedules
from psconv_tf import models
from psconv_tf.runtime import ownership
from psconv_tf.runtime.errors import InputError
from psconv_tf.runtime.run_config import Preprocessing
from psconv_tf.runtime.run_config import RunConfig
from psconv_tf.training.run_log import summary_line

SCRIPT = "coco"
DEFAULT_RUN_DIR = "runs/coco"


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_argument_group("data (TFDS coco/2017, or COCO-format JSON + images)")
    data.add_argument("--data-dir", help="TFDS data folder holding the prepared coco/2017")
    data.add_argument("--annotations", help="training COCO JSON (instead of --data-dir)")
    data.add_argument("--images", help="folder of the training images")
    data.add_argument("--val-annotations", help="validation COCO JSON")
    data.add_argument("--val-images", help="folder of the validation images")
    data.add_argument("--steps-per-epoch", type=cli.positive_int,
                      help="training steps per epoch; default one pass over the data")
    model = parser.add_argument_group("model")
    cli.add_model_arguments(model, "ps_resnet50")
    model.add_argument("--backbone-weights",
                       help="ImageNet run folder, .keras zoo model or .pth checkpoint")
    model.add_argument("--masked", default="error", choices=("error", "zero"),
                       help="nonzero masked weights of official PSConv .pth files: "
                            "refuse (error) or drop (zero); default error")
    model.add_argument("--frozen-stages", type=int, default=1,
                       help="stem and stages 1..K not trained (-1: none); default 1")
    model.add_argument("--norm-eval", action=argparse.BooleanOptionalAction, default=True,
                       help="fixed BatchNorm statistics (scales and offsets train); default on")
    model.add_argument("--head-convs", type=cli.positive_int, default=4,
                       help="3x3 convs of each RetinaNet head before its output; default 4")
    model.add_argument("--neck", default="standard", choices=("standard", "psconv"),
                       help="the FPN's 3x3 output convs: standard (the paper's tables) or "
                            "PSConv (its footnote 4); default standard")
    recipe = parser.add_argument_group("recipe (the 1x schedule)")
    cli.add_recipe_arguments(recipe, configs.COCO_1X,
                             default_decay="8,11 of 12 epochs, scaled with --epochs")
    recipe.add_argument("--min-size", type=cli.positive_int, default=800,
                        help="shorter image side after resizing; default 800")
    recipe.add_argument("--max-size", type=cli.positive_int, default=1333,
                        help="longest image side after resizing; default 1333")
    recipe.add_argument("--no-flip", dest="flip", action="store_false",
                        help="no random horizontal flips")
    run = parser.add_argument_group("run")
    cli.add_runtime_arguments(run, DEFAULT_RUN_DIR)
    cli.add_eval_only_argument(run)
    return parser


def _decay_epochs(epochs):
    return schedules.scaled_milestones(configs.COCO_1X.decay_epochs, configs.COCO_1X.epochs,
                                       epochs)


def _data_files(args):
    return task.DataFiles(args.data_dir, args.annotations, args.images, args.val_annotations,
                          args.val_images)


def _extras(args):
    """The detector's settings (`task.DETECTOR_DEFAULTS`), checked."""
    stages = len(models.architecture(args.model)["stages"])
    if not -1 <= args.frozen_stages <= stages:
        raise InputError(f"must be from -1 (none) to {stages} (every stage of {args.model}); "
                         f"got {args.frozen_stages}", argument="frozen_stages")
    try:
        input_pipeline.InputConfig(args.min_size, args.max_size)
    except ValueError as error:
        raise InputError(str(error), argument="min_size") from None
    return dict(min_size=args.min_size, max_size=args.max_size, flip=args.flip,
                frozen_stages=args.frozen_stages, norm_eval=args.norm_eval,
                head_convs=args.head_convs, backbone_weights=args.backbone_weights,
                masked=args.masked, neck=args.neck)


def main(argv=None):
    args = cli.parse_args(build_parser(), argv, SCRIPT)
    run_dir = args.run_dir or DEFAULT_RUN_DIR
    files = _data_files(args)
    if args.eval_only:
        files.check(eval_only=True)
        data = task.load_data(files, eval_only=True)
        results = task.evaluate_run(run_dir, data, _extras(args), args.batch_size)
        print(task.format_results(results))
        return results
    model_kwargs = cli.model_kwargs_from_args(args, backbone=True)
    extras = _extras(args)
    files.check()
    recipe = cli.recipe_from_args(configs.COCO_1X, args, _decay_epochs)
    strategy, options = cli.runtime_from_args(args, run_dir)
    ownership.check(run_dir, task.KIND, args.force_run_dir)  # before reading the data
    data = task.load_data(files)
    config = RunConfig(
        model=args.model,
        model_kwargs=model_kwargs,
        num_classes=len(data.categories),
        image_size=input_pipeline.InputConfig(args.min_size, args.max_size).largest_side,
        channels=3,
        recipe=recipe,
        dataset=args.data_dir or args.annotations,
        preprocessing=Preprocessing(input_pipeline.IMAGENET_MEAN_RGB,
                                    input_pipeline.IMAGENET_STDDEV_RGB),
        class_names=tuple(category.name for category in data.categories),
        train_examples=data.train_size,
        steps_per_epoch=args.steps_per_epoch or max(1, data.train_size // recipe.batch_size),
        seed=args.seed,
        **options.config_fields(strategy),
        script=SCRIPT,
        arguments=cli.replay_arguments(args),
        extras=extras,
    )
    metrics = task.train(config, strategy, options, data)
    print(task.format_results(metrics["final"]))
    print(summary_line(metrics, run_dir))
    return metrics


if __name__ == "__main__":
    cli.run_main(main)
