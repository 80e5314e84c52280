"""Interleaved profiling: paired speedups with bootstrap intervals and verdicts, drift, the roofline, MACs of ONNX
graphs, the advice that only acts on distinguishable differences, and plot labels that never overlap."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from matplotlib.text import Text

from conftest import tiny_vit
from vitdeploy.bench.artifacts import resolve_artifacts
from vitdeploy.bench.latency import ProfileItem, profile_artifacts, results_table, summary_lines
from vitdeploy.bench.macs import onnx_macs
from vitdeploy.bench.paired import FASTER, SAME, SLOWER, drift, paired_speedup, split_blocks
from vitdeploy.bench.report import ship_advice
from vitdeploy.cli import main
from vitdeploy.deploy import export_onnx
from vitdeploy.errors import VitDeployError
from vitdeploy.models import count_macs
from vitdeploy.runtime import OrtRunner, Runner
from vitdeploy.viz.pareto import front_at_noise
from vitdeploy.viz.plots import accuracy_latency_figure

SIZE = (3, 32, 32)


@pytest.fixture(scope="module")
def twin_graphs(tmp_path_factory):
    """Two byte-identical copies of one small ViT graph."""
    root = tmp_path_factory.mktemp("twins")
    a = export_onnx(tiny_vit(), root / "a.onnx", SIZE)
    b = root / "b.onnx"
    b.write_bytes(a.read_bytes())
    return a, b


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# ------------------------------------------------------------------------------------------ pure statistics
def test_paired_speedup_known_answers():
    rng = np.random.default_rng(0)
    base = 1.0 + 0.5 * rng.random(30)  # the machine moves by up to 50 % from round to round
    same = paired_speedup(base, base * (1 + 0.01 * rng.standard_normal(30)))
    assert same["verdict"] == SAME and same["ci95"][0] <= 1.0 <= same["ci95"][1] and same["rounds"] == 30
    fast = paired_speedup(base, base / 1.2 * (1 + 0.01 * rng.standard_normal(30)))
    assert fast["verdict"] == FASTER and fast["speedup"] == pytest.approx(1.2, rel=0.02)
    assert fast["ci95"][0] > 1.1 and fast["ci95"][1] < 1.3
    assert paired_speedup(base, base * 1.2)["verdict"] == SLOWER
    assert paired_speedup(base, base, seed=3) == paired_speedup(base, base, seed=3)  # seeded: reproducible
    one = paired_speedup([2.0], [1.0])
    assert one["speedup"] == 2.0 and one["ci95"] is None and one["verdict"] == SAME  # one round: no interval
    with pytest.raises(VitDeployError, match="same non-zero number of rounds"):
        paired_speedup([1.0, 2.0], [1.0])
    with pytest.raises(VitDeployError, match="positive"):
        paired_speedup([1.0, 0.0], [1.0, 1.0])


def test_drift_and_blocks():
    flat = drift([1.0, 1.01, 0.99, 1.0] * 5)
    assert not flat["large"] and flat["spread"] < 0.05
    step = drift([1.0] * 10 + [2.0] * 10)  # half the run at half speed
    assert step["large"] and step["spread"] == pytest.approx(1.0) and step["max_ms"] == 2.0
    assert split_blocks(10, 3) == [4, 3, 3] and split_blocks(6, 6) == [1] * 6
    with pytest.raises(VitDeployError, match="at least one call"):
        split_blocks(2, 3)


def test_front_at_noise():
    pts = [(1.00, 0.90, 4.0), (1.01, 0.95, 4.0), (2.0, 0.97, 1.0), (2.02, 0.97, 2.0)]
    tied = {frozenset((0, 1)), frozenset((2, 3))}
    same = lambda i, j: frozenset((i, j)) in tied  # noqa: E731
    front, beaten = front_at_noise(pts, same)
    # 0 and 1 are as fast at this noise: the more accurate 1 wins; 2 and 3 tie on speed and top-1: the smaller 2
    assert front == [1, 2] and beaten == {0: (1, "as fast"), 3: (2, "as fast")}
    # when every speed is distinguishable it is the plain Pareto front
    front, beaten = front_at_noise(pts, lambda i, j: False)
    assert front == [0, 1, 2] and beaten == {3: (2, "faster")}


def _point(variant, precision, p50, top1, rounds, params=1000):
    return {"variant": variant, "precision": precision, "backend": "ort-cpu", "batch": 1, "p50_ms": p50,
            "p99_ms": p50, "throughput_ips": 1000 / p50, "top1": top1, "n_eval": 360, "params": params,
            "macs": 1, "speedup": None, "speedup_ci95": None, "mode": "interleaved", "rounds_ms": rounds,
            "profile": 0}


def test_advice_acts_on_distinguishable_differences_only():
    rng = np.random.default_rng(1)
    machine = 1 + rng.random(20)  # per-round speed of the machine, shared by everything timed in that round
    noise = lambda: 1 + 0.03 * rng.standard_normal(20)  # noqa: E731
    fp32 = _point("vtp", "fp32", 0.30, 0.969, list(0.30 * machine * noise()))
    fp16 = _point("vtp", "fp16", 0.299, 0.969, list(0.30 * machine * noise()))  # no faster in truth
    int8 = _point("vtp", "int8", 0.20, 0.960, list(0.20 * machine * noise()))
    advice = ship_advice([fp32, fp16, int8], ("ort-cpu", 1))
    names = [advice["points"][i]["precision"] for i in advice["front"]]
    assert names == ["int8", "fp16"] or names == ["int8", "fp32"]
    tie = next(d for d in advice["dominated"] if d["point"]["precision"] in ("fp32", "fp16"))
    assert tie["why"] == "as fast" and tie["vs"]["verdict"] == SAME
    # equal top-1 and equal speed: the smaller one (fp16 weights) is preferred over fp32
    assert names[1] == "fp16" and not advice["unpaired"]
    sequential = [dict(p, mode="sequential") for p in (fp32, fp16, int8)]
    advice = ship_advice(sequential, ("ort-cpu", 1))
    assert advice["unpaired"] and [advice["points"][i]["precision"] for i in advice["front"]] == ["int8", "fp16"]


# ------------------------------------------------------------------------------------- a machine that drifts
class DriftingMachine:
    """Calls get 3x slower after `switch` calls in all: a slow spell of a shared machine in the middle of a run.
    Each call also varies by up to ±5 % (seeded), as real calls do: with bare sleeps the rounds agree to 0.2 %, and
    the scheduler's own noise on a loaded test machine (0.4 %) then decides the verdict instead of the drift."""

    def __init__(self, switch: int) -> None:
        self.calls, self.switch = 0, switch
        self.jitter = np.random.default_rng(0)


class SleepRunner(Runner):
    """A runner whose call takes 1 ms of the drifting machine's time (3 ms in the slow spell)."""

    def __init__(self, machine: DriftingMachine) -> None:
        super().__init__()
        self.name, self.machine = "sleep", machine

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self.machine.calls += 1
        spell = 3 if self.machine.calls > self.machine.switch else 1
        time.sleep(0.001 * spell * (1 + 0.05 * self.machine.jitter.uniform(-1, 1)))
        return np.zeros((len(x), 10), dtype=np.float32)


@pytest.mark.parametrize("interleaved", [True, False])
def test_identical_artifacts_stay_tied_through_drift_when_interleaved(interleaved):
    machine = DriftingMachine(switch=2 * 2 + 2 * 40 // 2)  # warm-up calls, then half of the timed calls
    items = [ProfileItem(name, lambda: SleepRunner(machine), {"precision": "fp32"}) for name in ("a", "b")]
    out = profile_artifacts(items, [1], warmup=2, iters=40, rounds=10, input_size=SIZE, show_progress=False,
                            interleaved=interleaved, roofline=False)
    a, b = out["results"]
    assert len(a["rounds_ms"]) == len(b["rounds_ms"]) == 10 and a["iters"] == b["iters"] == 40
    s = b["speedup"]
    if interleaved:  # both saw the slow spell in the same rounds: still 1.0, and said to be tied
        assert s["verdict"] == SAME and s["ci95"][0] <= 1.0 <= s["ci95"][1] and 0.8 < s["speedup"] < 1.25
        assert out["drift"][0]["large"] and "drift on sleep batch 1" in " ".join(summary_lines(out))
    else:  # b ran in the slow spell alone: its ratio carries the drift, and no interval pretends otherwise
        assert s["speedup"] < 0.6 and s["ci95"] is None and s["verdict"] is None and out["drift"] == []


def test_rounds_rotate_the_order():
    log = []

    class Logged(Runner):
        def __init__(self, name):
            super().__init__()
            self.name, self.label = "log", name

        def _activate(self):
            pass

        def _deactivate(self):
            pass

        def _infer(self, x):
            log.append(self.label)
            return np.zeros((len(x), 2), dtype=np.float32)

    items = [ProfileItem(n, lambda n=n: Logged(n)) for n in "abc"]
    profile_artifacts(items, [1], warmup=1, iters=6, rounds=3, input_size=SIZE, show_progress=False, roofline=False)
    timed = log[3:]  # one warm-up call each, then three rounds of a two-call block per artifact
    assert timed == list("aabbcc") + list("bbccaa") + list("ccaabb")


# ---------------------------------------------------------------------------------- real onnxruntime sessions
def test_interleaved_profile_of_twin_graphs(twin_graphs):
    a, b = twin_graphs
    made = []

    def runner(path):
        made.append(OrtRunner(path, threads=1, spin=False))
        return made[-1]

    items = [ProfileItem(str(p), lambda p=p: runner(p), {"precision": "fp32", "macs": 1000}) for p in (a, b)]
    out = profile_artifacts(items, [1, 2], warmup=2, iters=8, input_size=SIZE, show_progress=False, threads=1,
                            reference=str(b))
    assert out["settings"]["mode"] == "interleaved" and out["settings"]["rounds"] == 8
    assert [(r["artifact"], r["batch"]) for r in out["results"]] == [(str(a), 1), (str(a), 2), (str(b), 1), (str(b), 2)]
    assert all("speedup" in r for r in out["results"] if r["artifact"] == str(a))
    assert all("speedup" not in r for r in out["results"] if r["artifact"] == str(b))  # b is the reference
    assert {(c["artifact"], c["batch"]) for c in out["comparisons"]} == {(str(a), 1), (str(a), 2)}
    assert [d["reference"] for d in out["drift"]] == [str(b), str(b)]
    peak = out["peaks"]["ort-cpu"]
    assert peak["fp32"] > 0 and peak["int8"] > 0  # onnxruntime's own FP32 MatMul and INT8 MatMulInteger
    roof = out["results"][0]["roofline"]
    assert roof["peak"] == "fp32" and roof["share"] == pytest.approx(roof["gmacs"] / peak["fp32"])
    assert not any(r.spin for r in made) and not any(r.active for r in made)
    table = results_table(out)
    assert table.row_count == 4 and [c.header for c in table.columns][-3:] == ["speedup", "vs ref", "peak"]
    with pytest.raises(VitDeployError, match="not one of the artifacts"):
        profile_artifacts(items, [1], iters=2, input_size=SIZE, show_progress=False, reference="c.onnx")


def test_onnx_macs_match_the_model(tmp_path, digits_model_dir):
    from vitdeploy.models import load_model

    loaded = load_model(str(digits_model_dir))
    path = export_onnx(loaded.model, tmp_path / "m.onnx", loaded.input_size)
    import onnx

    assert onnx_macs(onnx.load(str(path))) == count_macs(loaded.model, loaded.input_size)
    (art,) = resolve_artifacts(str(path))
    assert art.macs == count_macs(loaded.model, loaded.input_size)


def test_profile_cli_interleaved_and_sequential(capsys, tmp_path, twin_graphs):
    a, b = twin_graphs
    out = tmp_path / "p.json"
    code, stdout, err = run(capsys, "profile", a, b, "--batch", "1", "--iters", "6", "--warmup", "1", "--threads", "1",
                            "--reference", b, "--out", out)
    assert code == 0, err
    rec = json.loads(out.read_text())
    assert rec["settings"]["mode"] == "interleaved" and rec["settings"]["reference"] == str(b)
    (cmp,) = rec["comparisons"]
    assert cmp["artifact"] == str(a) and cmp["verdict"] in (FASTER, SLOWER, SAME) and len(cmp["ci95"]) == 2
    assert "vs ref" in stdout and "interleaved (6 rounds)" in stdout and "roofline on ort-cpu" in stdout
    code, stdout, err = run(capsys, "profile", a, b, "--batch", "1", "--iters", "4", "--warmup", "1", "--threads", "1",
                            "--sequential", "--out", out)
    assert code == 0, err
    rec = json.loads(out.read_text())
    assert rec["settings"]["mode"] == "sequential" and rec["comparisons"][0]["ci95"] is None
    assert "timed one after another" in stdout


@pytest.mark.parametrize("extra, match", [
    (["--reference", "{tmp}/other.onnx"], "is not one of the artifacts given"),
    (["--sequential", "--rounds", "3"], "drop --sequential"),
    (["--rounds", "9", "--iters", "4"], "--rounds must be from 2 to --iters"),
    (["--rounds", "1"], "--rounds"),
])
def test_profile_bad_options_are_one_line(capsys, tmp_path, twin_graphs, extra, match):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    code, _, err = run(capsys, "profile", *twin_graphs, "--batch", "1", *extra, "--out", tmp_path / "p.json")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert "Traceback" not in err and not (tmp_path / "p.json").exists()


# -------------------------------------------------------------------------------------------------- plots
def test_accuracy_latency_labels_never_overlap():
    """Fifteen points, some on top of each other and one far out: every label stays clear of every other."""
    rng = np.random.default_rng(0)
    points = [{"variant": f"v{i // 3}", "precision": ("fp32", "fp16", "int8")[i % 3],
               "p50_ms": 0.3 + 0.005 * rng.random(), "top1": 0.96 + 0.002 * (i % 2), "n_eval": 360} for i in range(14)]
    points.append({"variant": "far", "precision": "int8", "p50_ms": 1.07, "top1": 0.969, "n_eval": 360})
    fig = accuracy_latency_figure(points, [0, 14], "many close points")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the labels themselves, leader lines apart
    assert len(boxes) == len(points)
    for i, bi in enumerate(boxes):
        for bj in boxes[i + 1:]:
            assert not bi.overlaps(bj), (bi, bj)
    assert ax.get_xscale() == "log"  # 1.07 ms against 0.3 ms: a linear axis would crush the others together
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("1  ") and any("far int8" in t for t in legend)
