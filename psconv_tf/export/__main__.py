"""`python -m psconv_tf.export`: see `psconv_tf.export.cli`."""

from psconv_tf.export.cli import main

main()
