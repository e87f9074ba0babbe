"""Measured tables in the docs, each between two markers on lines of its own:

    <!-- benchmark:NAME -->
    ...
    <!-- /benchmark:NAME -->

A program that measures replaces what lies between its markers with what it
printed and leaves the rest of the page (the prose around the tables) as it
is. The page is written under a temporary name and renamed (`files`), so a
killed run never leaves half a page. No TensorFlow until a page is written:
the benchmarks use this on every Keras backend.
"""

import re


def markers(name):
    """The opening and closing marker lines of section `name`."""
    return f"<!-- benchmark:{name} -->", f"<!-- /benchmark:{name} -->"


def replace_section(text, name, body):
    """`text` with the lines between section `name`'s markers replaced by
    `body`; ValueError unless each marker occurs once, opening first."""
    opening, closing = markers(name)
    starts = [m.end() for m in re.finditer(f"^{re.escape(opening)}$", text, re.MULTILINE)]
    ends = [m.start() for m in re.finditer(f"^{re.escape(closing)}$", text, re.MULTILINE)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"the page must hold the markers {opening} and {closing} once "
                         "each, in this order")
    return text[:starts[0]] + "\n" + body.strip("\n") + "\n" + text[ends[0]:]


def write_section(path, name, body):
    """Replaces section `name` of the page at `path` with `body`, atomically."""
    from psconv_tf.runtime import files

    with open(path, encoding="utf-8") as file:
        text = replace_section(file.read(), name, body)
    files.write_bytes(path, text.encode("utf-8"))
