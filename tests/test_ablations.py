"""The paper's ablations (Tables 3-5) as one command: the rows' networks, the
tables it prints, and a rerun that leaves finished runs as they are."""

import argparse
import os

import pytest

import training_helpers
from psconv_tf.classification import ablations
from psconv_tf.runtime.errors import InputError

pytestmark = pytest.mark.tensorflow

script = training_helpers.load_script("ablations")

# Written from §4.2 of the paper, not from the module: (table, row) -> (pattern,
# cyclic, paper's top-1 error); pattern None is the standard network.
PAPER = {
    (3, "t = 1 (baseline)"): (None, "both", 22.850),
    (3, "t = 2"): ((1, 2), "both", 21.948),
    (3, "t = 4"): ((1, 2, 1, 1), "both", 21.476),
    (3, "t = 8"): ((1, 2, 1, 1, 1, 1, 1, 1), "both", 21.634),
    (3, "t = 16"): ((1, 2) + (1,) * 14, "both", None),
    (3, "t = 32"): ((1, 2) + (1,) * 30, "both", None),
    (4, "{1, 1, 1, 1} (baseline)"): (None, "both", 22.850),
    (4, "{1, 2, 1, 1}"): ((1, 2, 1, 1), "both", 22.368),
    (4, "{1, 4, 1, 1}"): ((1, 4, 1, 1), "both", 22.754),
    (4, "{1, 2, 1, 2}"): ((1, 2, 1, 2), "both", 21.948),
    (4, "{1, 2, 1, 4} (default)"): ((1, 2, 1, 4), "both", 21.126),
    (4, "{1, 2, 4, 8}"): ((1, 2, 4, 8), "both", None),
    (5, "input ✓, output ✗"): ((1, 2, 1, 4), "input", 21.658),
    (5, "input ✗, output ✓"): ((1, 2, 1, 4), "output", 22.056),
    (5, "input ✓, output ✓"): ((1, 2, 1, 4), "both", 21.126),
}


def test_rows_are_the_papers_lattices():
    rows = {(row.table, row.label): (row.pattern, row.cyclic, row.paper_error)
            for row in ablations.ROWS}
    assert rows == PAPER
    by_label = {(row.table, row.label): row for row in ablations.ROWS}
    assert by_label[3, "t = 1 (baseline)"].model("ps_resnet50") == ("resnet50", {})
    assert by_label[5, "input ✓, output ✗"].model("ps_resnet50") == (
        "ps_resnet50", {"pattern": [1, 2, 1, 4], "cyclic": "input"})
    # One network, one run: Table 3's t = 4 is Table 4's {1, 2, 1, 1}.
    assert by_label[3, "t = 4"].run_name == by_label[4, "{1, 2, 1, 1}"].run_name
    networks = ablations.networks(ablations.ROWS, "ps_cifar_resnet20")
    assert len(networks) == 12  # 15 rows, 3 of them repeats


def test_a_row_the_model_cannot_have_is_named_not_trained():
    network = ablations.networks(ablations.rows_of([3]), "ps_cifar_resnet20")[-1]
    assert network.model_kwargs["pattern"] == [1, 2] + [1] * 30
    reasons = ablations.unbuildable([network], _config)
    assert "input channels=16, groups=1, t=32" in reasons[network.run_name]
    text = ablations.format_tables(ablations.rows_of([3]), {}, reasons)
    assert "| t = 32 | ps_1-2-1x30_both | — (not in the paper) | not built: input " \
           "channels=16, groups=1, t=32 |" in text
    with pytest.raises(InputError, match="among 3, 4, 5; got 6"):
        ablations.rows_of([6])


def _config(network):
    from psconv_tf.runtime.recipe import Recipe

    return training_helpers.tiny_run_config(
        Recipe(epochs=1, batch_size=4, learning_rate=0.1, reference_batch_size=4),
        model=network.model, model_kwargs=network.model_kwargs)


def test_script_prints_the_tables_and_a_rerun_skips_finished_runs(tmp_path, capsys):
    training_helpers.write_fashion_mnist(str(tmp_path / "data"), 64, 32)
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- benchmark:ablations -->\nold\n<!-- /benchmark:ablations -->\n")
    argv = [str(arg) for arg in (
        "--data-dir", tmp_path / "data", "--run-dir", tmp_path / "run", "--tables", "5",
        "--train-examples", 32, "--test-examples", 16, "--batch-size", 16, "--verbose", 0,
        "--no-autotune", "--write-docs", page)]
    summary = script.main(argv)
    output = capsys.readouterr().out
    errors = {row["row"]: row["top1_errors"] for row in summary["rows"]}
    assert list(errors) == ["input ✓, output ✗", "input ✗, output ✓", "input ✓, output ✓"]
    for (label, values), paper in zip(errors.items(), ("21.658", "22.056", "21.126")):
        assert len(values) == 1 and 0 <= values[0] <= 100
        assert f"| {label} | " in output and f"| {paper} | {values[0]:.2f} |" in output
    folders = sorted(name for name in os.listdir(tmp_path / "run") if "seed" in name)
    assert folders == ["ps_1-2-1-4_both_seed0", "ps_1-2-1-4_input_seed0",
                       "ps_1-2-1-4_output_seed0"]
    assert "Table 5: axes" in page.read_text() and "old" not in page.read_text()

    metrics = [tmp_path / "run" / folder / "metrics.json" for folder in folders]
    written = [(path.stat().st_mtime_ns, path.read_bytes()) for path in metrics]
    again = script.main(argv)
    assert [(path.stat().st_mtime_ns, path.read_bytes()) for path in metrics] == written
    assert [row["top1_errors"] for row in again["rows"]] == list(errors.values())


def test_help_documents_every_flag():
    parser = script.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # a retired flag that points to its successor
            continue
        assert action.help, f"{action.option_strings} has no help"
        assert all(option in text for option in action.option_strings), action.option_strings
