"""The benchmarks are a package whose scripts write their own tables into
docs/benchmarks.md, between markers, and nowhere else."""

import doctest
import importlib
import os
import re

import pytest

from benchmarks import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The sections that the TensorFlow benchmarks' --write-docs replaces.
SECTIONS = ("layer_speed-tensorflow", "layer_speed-tensorflow-quick", "layer_speed-jax",
            "model_speed-tensorflow", "model_speed-tensorflow-quick", "layer_breakdown",
            "tf_dilation_speed", "training_speed", "tflite_latency")
PAGE = "intro\n<!-- benchmark:a -->\nold a\n<!-- /benchmark:a -->\nmiddle\n" \
       "<!-- benchmark:b -->\nold b\n<!-- /benchmark:b -->\nend\n"


def test_report_examples():
    result = doctest.testmod(report)
    assert result.attempted > 0 and result.failed == 0


def test_a_section_is_replaced_and_nothing_else():
    text = report.replace_section(PAGE, "b", "| new | table |\n")
    assert text == PAGE.replace("old b", "| new | table |")
    assert report.replace_section(text, "b", "old b") == PAGE


@pytest.mark.parametrize("page", [
    PAGE.replace("<!-- /benchmark:a -->\n", ""),                  # no closing marker
    PAGE + "<!-- benchmark:a -->\n",                              # two opening markers
    "<!-- /benchmark:a -->\nx\n<!-- benchmark:a -->\n",           # closing first
    PAGE.replace("<!-- benchmark:a -->", "text <!-- benchmark:a -->"),  # not a line of its own
])
def test_misplaced_markers_are_refused(page):
    with pytest.raises(ValueError, match="benchmark:a"):
        report.replace_section(page, "a", "new")


def test_write_section_writes_whole_or_not_at_all(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(PAGE)
    report.write_section("a", "new a", path=str(path))
    assert path.read_text() == PAGE.replace("old a", "new a")
    with pytest.raises(ValueError):
        report.write_section("missing", "x", path=str(path))
    assert path.read_text() == PAGE.replace("old a", "new a")
    assert os.listdir(tmp_path) == ["benchmarks.md"]  # no temporary left


def test_docs_page_holds_every_section_once():
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8") as file:
        text = file.read()
    for name in SECTIONS:
        report.replace_section(text, name, "x")  # raises unless the markers hold
    opened = re.findall(r"^<!-- benchmark:(\S+) -->$", text, re.MULTILINE)
    assert sorted(opened) == sorted(SECTIONS)


@pytest.mark.parametrize("name", ["layer_speed", "model_speed", "layer_breakdown",
                                  "tf_dilation_speed", "training_speed", "timing"])
def test_benchmarks_import_as_modules(name):
    module = importlib.import_module(f"benchmarks.{name}")
    with open(module.__file__, encoding="utf-8") as file:
        assert "sys.path" not in file.read()
