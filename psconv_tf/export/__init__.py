"""Export for deployment: a SavedModel with a serving signature, and TFLite.

A model (a zoo name, a `.keras` file or a training run directory) becomes a
SavedModel whose `serving_default` signature takes a batch of `images`
(float32 or uint8, channels last), optionally with the normalization and a
resize built in, and returns named outputs ("logits" for the zoo's
classifiers, see `output_names`), and TFLite flatbuffers converted from that
SavedModel, with the same signature:

- `float32`: the float model;
- `float16`: float16 weights, float32 computation;
- `dynamic_int8`: int8 weights, activations quantized on the fly;
- `int8`: integer-only: int8 input (uint8 for a uint8 signature),
  computation and output, each tensor with its scale and zero point,
  calibrated on a representative dataset (a directory of images, a
  `.npy`/`.npz` file, an array or a callable).

Keras's own `model.export(path, format="litert")` converts a PS model to a
float TFLite file as well; this package adds what it does not do: the
serving signature above, builtin operators only (Keras's allows Flex ops),
one SavedModel traced once for every format, calibration and integer
input/output, run folders, and files written whole.

TFLite files use builtin operators only (no Flex / SELECT_TF_OPS), so they
run on the plain LiteRT runtime (`ai_edge_litert`). Every file and folder is
written under a temporary name and renamed when complete. Command line:

    python -m psconv_tf.export ps_resnet50 exported/ --weights w.weights.h5 \\
        --formats saved_model,float32,int8 --input-dtype uint8 --normalize \\
        --representative-data calibration_images/

A training run directory is read through `psconv_tf.runtime.run_config`:
its `best.keras`, and from its `config.json` the image size (for a model
built with free spatial dimensions) and the normalization that
`normalization="auto"` (`--normalize`) builds in.

Modules: `sources` (what is exported), `serving` (the signature and the
SavedModel), `calibration` (int8 calibration data), `tflite` (conversion and
its checks), `exporter` (`export`, all formats at once), `cli`.
"""

from psconv_tf.export.calibration import representative_dataset
from psconv_tf.export.cli import main
from psconv_tf.export.errors import ExportError
from psconv_tf.export.exporter import FORMATS
from psconv_tf.export.exporter import export
from psconv_tf.export.serving import IMAGENET_MEAN
from psconv_tf.export.serving import IMAGENET_STD
from psconv_tf.export.serving import INPUT_DTYPES
from psconv_tf.export.serving import SIGNATURE_KEY
from psconv_tf.export.serving import export_saved_model
from psconv_tf.export.serving import output_names
from psconv_tf.export.serving import serving_model
from psconv_tf.export.sources import load_model
from psconv_tf.export.sources import read_run_config
from psconv_tf.export.tflite import QUANTIZATIONS
from psconv_tf.export.tflite import convert_to_tflite
from psconv_tf.export.tflite import float_operators
from psconv_tf.export.tflite import io_quantization
from psconv_tf.export.tflite import tflite_operators
