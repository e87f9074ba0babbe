"""The benchmarks' tables in docs/benchmarks.md, written by the benchmarks.

Each table lives between two markers on lines of their own,

    <!-- benchmark:NAME -->
    ...
    <!-- /benchmark:NAME -->

and a run with `--write-docs` replaces what lies between them with what it
printed: the command, where it ran, and the table. The rest of the file (the
prose around the tables) is left as it is, and the file is written under a
temporary name and renamed, so a killed run never leaves half a page.
"""

import datetime
import os
import platform
import sys

import keras

from psconv_tf.runtime import doc_sections

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "docs", "benchmarks.md")


def add_argument(parser):
    """Adds `--write-docs` to a benchmark's argument parser."""
    parser.add_argument(
        "--write-docs", action="store_true",
        help="also write the table into docs/benchmarks.md, replacing the "
             "previous figures of this benchmark")


def markers(name):
    """The opening and closing marker lines of section `name`."""
    return doc_sections.markers(name)


def replace_section(text, name, body):
    """`text` with the lines between section `name`'s markers replaced by
    `body`; ValueError unless each marker occurs once, opening first
    (`psconv_tf.runtime.doc_sections.replace_section`).

    >>> page = "a\\n<!-- benchmark:x -->\\nold\\n<!-- /benchmark:x -->\\nb\\n"
    >>> print(replace_section(page, "x", "new"), end="")
    a
    <!-- benchmark:x -->
    new
    <!-- /benchmark:x -->
    b
    """
    return doc_sections.replace_section(text, name, body)


def describe(module):
    """The command that ran (as `python -m benchmarks.NAME ...`) and where."""
    command = " ".join(["python -m", module] + sys.argv[1:])
    backend = keras.backend.backend()
    versions = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    version = getattr(sys.modules.get(versions[backend]), "__version__", "?")
    return (f"`{command}`\n\n{backend} {version}, keras {keras.__version__}, "
            f"{os.cpu_count()} CPU cores ({platform.machine()}), "
            f"{datetime.date.today().isoformat()}:")


def write_section(name, body, path=DOCS):
    """Replaces section `name` of the page at `path` with `body`, atomically."""
    doc_sections.write_section(path, name, body)
    print(f"wrote the table to {path} ({markers(name)[0]})")


def write_table(name, module, lines, path=DOCS):
    """Writes section `name`: how `module` ran (`describe`), then the table
    `lines` exactly as the benchmark printed them."""
    write_section(name, describe(module) + "\n\n" + "\n".join(lines), path)
