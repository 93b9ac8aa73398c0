"""Every benchmark draws its PNGs through benchmarks/plots.py from the JSON it writes.

Each plotter is run on the JSON documents the benchmarks' short runs wrote
into docs/results/ (the docs show the PNGs drawn from them), and on a small
document of the same shape in tests/benchmark_shapes/ (written from the
benchmark's code, for the benchmarks too long to run here), so a plotter that
no longer fits its benchmark's output fails here.
"""

from __future__ import annotations

import ast
import json
import shutil
import struct
from pathlib import Path

import pytest

from benchmarks import plots

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
# Modules of benchmarks/ that are not benchmarks: libraries the benchmarks share (checkout: tests/ on the path), the docs' screenshot tool.
NOT_BENCHMARKS = {"__init__", "checkout", "plots", "loadgen", "peers", "wrk", "locustfile", "hashsink", "dashboard_screenshot"}
# These draw through benchmarks.plots with functions of their own, from data their JSON does not keep
# (lb_quality: every request's latency, for the CDFs) or from the table before it is written (overhead).
OWN_PLOTTING = {"lb_quality": "plots.latency_cdf(", "overhead": "plots.bars("}

pytest.importorskip("matplotlib")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def benchmark_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in NOT_BENCHMARKS)


def test_every_benchmark_writes_its_pngs_through_plots():
    for name in benchmark_modules():
        source = (ROOT / "benchmarks" / f"{name}.py").read_text()
        if name in OWN_PLOTTING:
            assert OWN_PLOTTING[name] in source, name
            continue
        calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
                 and ast.unparse(node.func) in ("plots.save", "plots.write")]
        assert calls, f"benchmarks/{name}.py never calls plots.save or plots.write"
        assert all(ast.literal_eval(call.args[0]) == name for call in calls), name
        assert name in plots.PLOTTERS, name


SHAPES = Path(__file__).resolve().parent / "benchmark_shapes"
INPUTS = [pytest.param(folder / f"{name}.json", id=f"{folder.name}-{name}")
          for name in sorted(plots.PLOTTERS) for folder in (RESULTS, SHAPES) if (folder / f"{name}.json").exists()]


def test_every_plotter_has_an_input():
    assert {p.values[0].stem for p in INPUTS} == set(plots.PLOTTERS)


@pytest.mark.parametrize("source", INPUTS)
def test_each_plotter_draws_pngs_from_the_json_its_benchmark_wrote(source, tmp_path):
    name = source.stem
    doc = json.loads(source.read_text())
    target = tmp_path / f"{name}.json"
    shutil.copy(source, target)
    written = plots.write(name, doc, target)
    assert written, f"no PNG for {name}"
    for path in written:
        assert path.parent == tmp_path and path.name.startswith(f"{name}-") and path.suffix == ".png"
        width, height = png_size(path)
        assert width >= 400 and height >= 300


def test_no_json_path_no_png(tmp_path, capsys):
    assert plots.write("placement", {"cases": []}, None) == []
    assert list(tmp_path.iterdir()) == []


def test_the_docs_show_the_current_pngs():
    """Every PNG in docs/results/ is linked from a doc, and every linked one exists."""
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for png in RESULTS.glob("*.png"):
        assert f"results/{png.name}" in docs, f"docs/results/{png.name} is not shown in any doc"
    import re

    for link in re.findall(r"\((results/[^)]+\.png)\)", docs):
        assert (ROOT / "docs" / link).exists(), link


def test_save_writes_the_document_as_json_then_its_pngs_and_nothing_without_a_path(tmp_path, capsys):
    doc = json.loads((SHAPES / "sim_clock.json").read_text())
    at = tmp_path / "clock.json"
    written = plots.save("sim_clock", doc, str(at))
    assert json.loads(at.read_text()) == doc and at.read_text().endswith("}\n")
    assert written and all(p.exists() and p.name.startswith("clock-") for p in written)
    assert f"wrote {at}" in capsys.readouterr().out
    assert plots.save("sim_clock", doc, None) == [] and sorted(tmp_path.iterdir()) == sorted([at, *written])


def test_katyusha_and_the_tree_under_test_are_drawn_red_an_earlier_commit_as_a_peer():
    """The bars beside an earlier commit (bytecodes_per_request, calls_per_request) find this tree in red."""
    colour = plots.colours(["this tree", "5a57b28", "katyusha-2w", "haproxy"])
    assert colour["this tree"] in plots.KATYUSHA and colour["katyusha-2w"] in plots.KATYUSHA
    assert colour["5a57b28"] in plots.PEERS and colour["haproxy"] in plots.PEERS
    assert colour["this tree"] != colour["katyusha-2w"] and colour["5a57b28"] != colour["haproxy"]
