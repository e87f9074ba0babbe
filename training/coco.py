"""COCO 2017 detection: RetinaNet with an FPN of standard convs on a zoo
backbone (PS or standard), the 1x schedule, pycocotools evaluation.

    python training/coco.py --data-dir /data/tfds --model ps_resnet50 \
        --backbone-weights ps_resnet50.pth --run-dir runs/retinanet_ps_r50
    python training/coco.py --annotations instances_train2017.json \
        --images train2017/ --val-annotations instances_val2017.json \
        --val-images val2017/ --model resnet50 --backbone-weights runs/r50

The paper (Table 7) fine-tunes Mask R-CNN in MMDetection; keras-hub has no
Mask R-CNN, so this is RetinaNet on the same backbones and schedule.
"""

import argparse
import sys

from psconv_tf.detection import coco_lib


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data (TFDS coco/2017, or COCO-format JSON + images)")
    data.add_argument("--data-dir", help="TFDS data_dir holding the prepared coco/2017")
    data.add_argument("--annotations", help="training COCO JSON (instead of TFDS)")
    data.add_argument("--images", help="folder of the training images")
    data.add_argument("--val-annotations", help="validation COCO JSON")
    data.add_argument("--val-images", help="folder of the validation images")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="ps_resnet50", help="zoo backbone name")
    model.add_argument("--backbone-weights",
                       help="ImageNet run folder, .keras zoo model or .pth checkpoint")
    model.add_argument("--masked", default="error", choices=("error", "zero"),
                       help="load_torch's handling of nonzero masked PSConv weights")
    model.add_argument("--frozen-stages", type=int, default=1,
                       help="stem and stages 1..k frozen (-1: none)")
    model.add_argument("--norm-eval", action=argparse.BooleanOptionalAction, default=True,
                       help="BatchNorm statistics frozen (scale and offset train)")
    model.add_argument("--head-convs", type=int, default=4,
                       help="3x3 convs in each RetinaNet head before its output")
    recipe = parser.add_argument_group("recipe (1x schedule)")
    recipe.add_argument("--epochs", type=int, default=12, help="training epochs")
    recipe.add_argument("--milestones", default="8,11",
                        help="epochs at which the learning rate is divided by 10")
    recipe.add_argument("--batch-size", type=int, default=16, help="global batch size")
    recipe.add_argument("--learning-rate", type=float, default=0.01,
                        help="learning rate at batch 16, scaled linearly with --batch-size")
    recipe.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"),
                        help="SGD with momentum 0.9 (the recipe) or AdamW (short runs from scratch)")
    recipe.add_argument("--warmup-steps", type=int, default=500, help="linear warm-up steps")
    recipe.add_argument("--min-size", type=int, default=800, help="shorter side after resizing")
    recipe.add_argument("--max-size", type=int, default=1333, help="longest side after resizing")
    recipe.add_argument("--no-flip", dest="flip", action="store_false",
                        help="no random horizontal flips")
    recipe.add_argument("--steps-per-epoch", type=int,
                        help="steps per epoch (default: one pass over the data)")
    run = parser.add_argument_group("run")
    run.add_argument("--run-dir", default="runs/coco", help="checkpoints, logs, results")
    run.add_argument("--strategy", default="auto",
                     help="auto, default, mirrored, multi_worker or tpu")
    run.add_argument("--tpu", help="TPU name or address for --strategy tpu")
    run.add_argument("--precision", default="float32",
                     choices=("float32", "mixed_float16", "mixed_bfloat16"),
                     help="dtype policy of the model")
    run.add_argument("--jit-compile", action="store_true", help="XLA-compile the train step")
    run.add_argument("--eval-only", action="store_true",
                     help="evaluate the run's final model, no training")
    run.add_argument("--seed", type=int, default=0, help="random seed")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        options = coco_lib.options_from_args(args)
    except ValueError as error:
        sys.exit(f"coco.py: error: {error}")
    results = coco_lib.run(options)
    print(coco_lib.format_results(results))


if __name__ == "__main__":
    main()
