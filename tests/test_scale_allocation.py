"""The scale-allocation report: shares against hand computations in float64."""

import json
import sys

import keras
import numpy as np
import pytest

from psconv_tf import DynamicPSConv2D
from psconv_tf import PSConv2D
from psconv_tf import scale_allocation as sa


def _hand_shares(kernel, rate_of):
    """{rate: (kernel share, energy share)}, kernel (kh, kw, in, filters) and
    rate_of[c][k] written out by hand, one kernel at a time."""
    counts, energies = {}, {}
    for c, row in enumerate(rate_of):
        for k, rate in enumerate(row):
            energy = sum(float(v) ** 2 for v in np.asarray(kernel, np.float64)[:, :, k, c].ravel())
            counts[rate] = counts.get(rate, 0) + 1
            energies[rate] = energies.get(rate, 0.0) + energy
    kernels, total = sum(counts.values()), sum(energies.values())
    return {r: (counts[r] / kernels, energies[r] / total) for r in counts}


def _check(allocation, expected):
    assert sorted(allocation.kernels) == sorted(expected)
    for rate, (kernel_share, energy_share) in expected.items():
        assert allocation.kernel_shares[rate] == pytest.approx(kernel_share, abs=1e-12)
        assert allocation.energy_shares[rate] == pytest.approx(energy_share, rel=1e-6)


def _built(layer, in_channels):
    layer.build((None, 12, 12, in_channels))
    return layer


def test_static_layer_against_a_hand_computation():
    layer = _built(PSConv2D(4, 3, pattern=(1, 2), use_bias=False), 4)
    # The blocked lattice of pattern (1, 2), 4 -> 4 channels, written out:
    # input blocks {0, 1}, {2, 3} at cycle positions 1, 0; filter blocks
    # {0, 1}, {2, 3} at positions 0, 1; D[c, k] = pattern[(a(k) - b(c)) % 2].
    rate_of = [[2, 2, 1, 1],
               [2, 2, 1, 1],
               [1, 1, 2, 2],
               [1, 1, 2, 2]]
    kernel = (np.arange(3 * 3 * 4 * 4, dtype=np.float64).reshape(3, 3, 4, 4) - 70) / 50
    kernel[:, :, 0, 1] *= 4.0  # a rate-2 kernel with most of the energy
    layer.kernel.assign(kernel.astype("float32"))
    np.testing.assert_array_equal(layer.dilation_matrix(), rate_of)
    allocation = sa.layer_allocation(layer)
    assert (allocation.kind, allocation.in_channels, allocation.filters) == ("static", 4, 4)
    _check(allocation, _hand_shares(kernel, rate_of))
    assert sum(allocation.energy_shares.values()) == pytest.approx(1.0)


def test_grouped_layer_maps_each_kernel_to_its_group():
    # groups=2: filters 0, 1 see input channels 0, 1; filters 2, 3 see 2, 3.
    # Row c: filter c's rates over the input channels of its own group.
    compact = [[1, 3], [2, 3], [2, 1], [1, 1]]
    layer = _built(PSConv2D(4, 3, groups=2, dilation_matrix=compact, use_bias=False), 4)
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 4))
    kernel[:, :, 1, 2] *= 5.0  # filter 2, its group's 2nd channel: rate 1
    layer.kernel.assign(kernel.astype("float32"))
    # Per kernel (filter c, channel j of c's group): energy and rate by hand.
    counts, energies = {}, {}
    for c in range(4):
        for j in range(2):
            rate = compact[c][j]
            counts[rate] = counts.get(rate, 0) + 1
            energies[rate] = energies.get(rate, 0.0) + float(np.sum(kernel[:, :, j, c] ** 2))
    allocation = sa.layer_allocation(layer)
    assert (allocation.in_channels, allocation.groups) == (4, 2)
    assert allocation.kernels == {1: 4, 2: 2, 3: 2}
    assert "| 4 -> 4, 2 groups |" in sa.format_table([allocation])
    total = sum(energies.values())
    for rate in counts:
        assert allocation.energy_shares[rate] == pytest.approx(energies[rate] / total, rel=1e-6)


def test_dynamic_layer_uses_its_current_assignment():
    layer = _built(DynamicPSConv2D(4, 3, rates=(1, 2), use_bias=False), 4)
    assert [tuple(f.shape) for f in layer.mask_factors] == [(4, 4), (1, 1)]
    # M = (1 + sign(A_0) x sign(A_1)) / 2, 1: the large rate; 5 of 16 large.
    signs = np.array([[1, -1, -1, -1],
                      [1, 1, -1, -1],
                      [-1, -1, 1, -1],
                      [-1, -1, -1, 1]])
    layer.mask_factors[0].assign(0.5 * signs.astype("float32"))
    layer.mask_factors[1].assign([[0.5]])
    kernel = np.random.default_rng(1).normal(size=(3, 3, 4, 4))
    layer.kernel.assign(kernel.astype("float32"))
    rate_of = np.where(signs > 0, 2, 1).tolist()
    allocation = sa.layer_allocation(layer)
    assert allocation.kind == "dynamic"
    assert allocation.kernel_shares == {1: 11 / 16, 2: 5 / 16}
    _check(allocation, _hand_shares(kernel, rate_of))
    # The other sign of A_1 swaps every kernel's rate.
    layer.mask_factors[1].assign([[-0.5]])
    swapped = sa.layer_allocation(layer)
    _check(swapped, _hand_shares(kernel, 3 - np.array(rate_of)))
    # The table shows the kernel shares before (11, 5 of 16) and now
    # (31.25 % printed as 31.2: Python rounds an exact half to even).
    row = sa.format_table([swapped], initial=[allocation]).splitlines()[2]
    assert [cell.strip() for cell in row.split("|")[4:6]] == ["68.8 · 31.2", "31.2 · 68.8"]
    # A rate that has lost every kernel stays in the report, at 0.
    layer.mask_factors[0].assign(np.full((4, 4), -0.5, "float32"))
    layer.mask_factors[1].assign([[0.5]])
    empty = sa.layer_allocation(layer)
    assert empty.kernels == {1: 16, 2: 0} and empty.energy_shares == {1: 1.0, 2: 0.0}


def test_nested_model_saved_and_loaded(tmp_path, capsys):
    inner = keras.Sequential(
        [keras.Input((6, 6, 4)), PSConv2D(4, 3, pattern=(1, 2), padding="same")], name="inner")
    inputs = keras.Input((6, 6, 4))
    outputs = DynamicPSConv2D(4, 3, rates=(1, 3), padding="same", name="learned")(inner(inputs))
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    measured = [a.to_dict() for a in sa.scale_allocation(model)]
    assert [row["name"] for row in measured] == [inner.layers[0].name, "learned"]
    assert [a.to_dict() for a in sa.scale_allocation(sa.load(path))] == measured
    sa.main([path, "--json", "-"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["layers"] == measured
    assert sum(printed["total"]["kernels"].values()) == 32


def test_a_zoo_model_end_to_end(tmp_path, capsys):
    sa.main(["ps_cifar_resnet20", "--compare-init", "--json", str(tmp_path / "s.json"),
             "--plot", str(tmp_path / "s.png")])
    table = capsys.readouterr().out
    assert table.startswith("| layer") and "\n| all layers" in table
    report = json.loads((tmp_path / "s.json").read_text())
    assert len(report["layers"]) == 18 and len(report["initial"]["layers"]) == 18
    # Pattern (1, 2, 1, 4): half the kernels at rate 1, a quarter at 2 and 4;
    # He initialization gives each kernel the same expected energy, so over
    # the 29,696 kernels the energy shares lie close to those.
    kernel_shares = {"1": 0.5, "2": 0.25, "4": 0.25}
    assert report["total"]["kernel_shares"] == kernel_shares
    for rate, share in report["initial"]["total"]["energy_shares"].items():
        assert share == pytest.approx(kernel_shares[rate], abs=0.02)
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.png"]


def test_an_undefined_layer_is_named_and_the_others_reported():
    good = _built(PSConv2D(4, 3, pattern=(1, 2), name="good"), 4)
    bad = _built(PSConv2D(4, 3, pattern=(1, 2), name="bad"), 4)
    kernel = np.ones((3, 3, 4, 4), "float32")
    kernel[0, 0, 0, 0] = np.nan
    bad.kernel.assign(kernel)
    zero = _built(PSConv2D(4, 3, pattern=(1, 2), name="zero", kernel_initializer="zeros"), 4)
    rows = [sa.layer_allocation(layer) for layer in (good, bad, zero)]
    assert rows[1].problem == "its kernel holds 1 non-finite value(s)"
    assert rows[2].problem == "its kernel is all zeros"
    assert rows[1].energy_shares is None and rows[0].problem is None
    assert sa.total(rows).energies == rows[0].energies
    table = sa.format_table(rows)
    assert "\nbad: its kernel holds 1 non-finite value(s)" in table
    json.dumps([row.to_dict() for row in rows], allow_nan=False)
    learned = _built(DynamicPSConv2D(4, 3, rates=(1, 2), name="learned"), 4)
    learned.mask_factors[1].assign([[np.nan]])
    assert "non-finite value(s)" in sa.layer_allocation(learned).problem
    unbuilt = sa.layer_allocation(PSConv2D(4, 3, pattern=(1, 2), name="unbuilt"))
    assert unbuilt.problem.count("\n") == 0 and unbuilt.energy_shares is None
    table = sa.format_table([unbuilt, rows[0]])
    assert "| unbuilt    | static | -  " in table and "\nunbuilt: " in table


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    plain = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 3)], name="plain")
    with pytest.raises(ValueError, match="^model 'plain' has no PSConv2D or DynamicPSConv2D"):
        sa.scale_allocation(plain)
    for source, message in ((str(tmp_path / "absent.keras"), "absent.keras: no such file"),
                            ("cifar_resnet20", "has no PSConv2D"),
                            ("ps_nothing", "neither a zoo model name nor an existing file")):
        with pytest.raises(SystemExit) as stop:
            sa.main([source])
        assert stop.value.code == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error
    with pytest.raises(SystemExit):  # a folder where the PNG should go
        sa.main(["ps_cifar_resnet20", "--plot", str(tmp_path)])
    error = capsys.readouterr().err
    assert error.endswith(f"error: --plot: cannot write {tmp_path} (Is a directory)\n")
    assert error.count("\n") == 1
    layer = _built(PSConv2D(4, 3, pattern=(1, 2)), 4)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match='^plotting needs matplotlib: pip install "psconv-tf'):
        sa.plot_scale_allocation([sa.layer_allocation(layer)], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.tensorflow
def test_docs_script_refuses_a_folder_without_a_run(tmp_path):
    from benchmarks import scale_allocation as script

    with pytest.raises(ValueError, match="neither a model's run folder"):
        script.model_folders(str(tmp_path))
    with open(script.__file__, encoding="utf-8") as file:
        assert "sys.path" not in file.read()
