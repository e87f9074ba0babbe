"""COCO 2017 detection: RetinaNet with an FPN of standard convs on a zoo
backbone (PS or standard), the 1x schedule, pycocotools evaluation.

The paper (Table 7) fine-tunes Mask R-CNN in MMDetection; keras-hub has no
Mask R-CNN, so this is RetinaNet on the same backbones, schedule and
augmentation: SGD 0.9 with coupled weight decay 1e-4, learning rate 0.01 at
16 images (scaled linearly with --batch-size), 500 steps of linear warm-up,
12 epochs with the rate divided by 10 at epochs 8 and 11, images resized to
shorter side 800 / longer side at most 1333 with random horizontal flips,
the backbone's stem and first stage frozen and its BatchNorm statistics
fixed. Evaluation: box AP, AP50, AP75, AP_S, AP_M, AP_L (pycocotools).

Data: --data-dir, a TFDS folder with the prepared coco/2017 (nothing is
downloaded; `tfds build coco/2017 --data_dir DIR` prepares it), or COCO-format
files: --annotations/--images and --val-annotations/--val-images. A bad
annotation record is skipped and named; an unusable file stops with one line.

Run folder: psconv_run.json (what the run writes there), backup/ (restarting
the same command resumes from the last epoch; removed once final.keras is
written), final.keras, results.json (null for an AP that is undefined). A
folder holding other files is refused (--force-run-dir adds the run's files
among them); one run at a time writes it; a finished run is left as it is.
Ctrl-C or SIGTERM stops at the next step and says where a rerun resumes.

    python training/coco.py --data-dir /data/tfds --model ps_resnet50 \\
        --backbone-weights ps_resnet50.pth --run-dir runs/retinanet_ps_r50
"""

import argparse

from psconv_tf.detection import coco_lib
from psconv_tf.training import cli
from psconv_tf.runtime import strategy as strategies


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
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="ps_resnet50", help="zoo backbone name; default ps_resnet50")
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
    recipe = parser.add_argument_group("recipe (the 1x schedule)")
    recipe.add_argument("--epochs", type=cli.positive_int, default=12,
                        help="training epochs; default 12")
    recipe.add_argument("--milestones", type=cli.int_list, default=(8, 11),
                        help="epochs at which the learning rate drops 10x; default 8,11")
    recipe.add_argument("--batch-size", type=cli.positive_int, default=16,
                        help="global batch size; default 16")
    recipe.add_argument("--learning-rate", type=cli.finite_float, default=0.01,
                        help="learning rate at batch 16, scaled linearly; default 0.01")
    recipe.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"),
                        help="sgd (momentum 0.9, coupled weight decay: the recipe) or "
                             "adam (AdamW, for short runs from scratch); default sgd")
    recipe.add_argument("--warmup-steps", type=int, default=500,
                        help="steps of linear warm-up; default 500")
    recipe.add_argument("--min-size", type=cli.positive_int, default=800,
                        help="shorter image side after resizing; default 800")
    recipe.add_argument("--max-size", type=cli.positive_int, default=1333,
                        help="longest image side after resizing; default 1333")
    recipe.add_argument("--no-flip", dest="flip", action="store_false",
                        help="no random horizontal flips")
    recipe.add_argument("--steps-per-epoch", type=cli.positive_int,
                        help="training steps per epoch; default one pass over the data")
    run = parser.add_argument_group("run")
    run.add_argument("--run-dir", default="runs/coco",
                     help="run folder; default runs/coco. A folder that holds other "
                          "files and no run is refused")
    run.add_argument("--force-run-dir", action="store_true",
                     help="use a --run-dir that holds files of its own: the run adds its "
                          "files among them, refuses if one of its names is taken, and "
                          "never touches the others")
    run.add_argument("--strategy", default="auto", choices=strategies.STRATEGIES,
                     help="tf.distribute strategy: cpu, gpu (mirrored), multiworker "
                          "(TF_CONFIG), tpu (--tpu); auto picks the first available of "
                          "tpu, multiworker, gpu, cpu")
    run.add_argument("--tpu", help="TPU name or grpc:// address ('local' on a TPU VM)")
    run.add_argument("--precision", default="auto", choices=strategies.PRECISIONS,
                     help="auto: mixed_bfloat16 on TPU, mixed_float16 on GPU, fp32 on CPU")
    run.add_argument("--jit-compile", default="auto", choices=strategies.JIT_MODES,
                     help="XLA-compile the training step; auto: on for GPU and TPU")
    run.add_argument("--eval-only", action="store_true",
                     help="evaluate the run folder's final.keras, no training")
    run.add_argument("--seed", type=cli.seed, default=0,
                     help=f"random seed, in [0, {cli.MAX_SEED}]; default 0")
    run.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                     help="0 silent, 1 progress bar, 2 one line per epoch; default 2")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    results = coco_lib.run(coco_lib.options_from_args(args))
    print(coco_lib.format_results(results))


if __name__ == "__main__":
    cli.run_main(main)
