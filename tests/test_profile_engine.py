"""profiling/profile_engine.py, the standalone Jetson profiler: what can be checked without TensorRT (argument
parsing, the JSON schema against vitdeploy's own, the one-line errors, power mode and clock parsing), and a real
engine under the `trt` marker."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_vit
from vitdeploy.bench.latency import ProfileItem, profile_artifacts
from vitdeploy.runtime import OrtRunner, host_info
from vitdeploy.bench.latency import latency_stats, make_input
from vitdeploy.deploy import export_onnx

SCRIPT = Path(__file__).resolve().parents[1] / "profiling" / "profile_engine.py"
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def pe():
    spec = importlib.util.spec_from_file_location("profile_engine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


# -------------------------------------------------------------------------------------------- arguments
def test_parse_args(pe, tmp_path):
    a = pe.parse_args(["m.fp16.b8.plan"])
    assert a.engine == Path("m.fp16.b8.plan") and a.batch == [1, 8] and a.iters == 200 and a.duration is None
    a = pe.parse_args(["e.plan", "--batch", "1,4,16", "--duration", "2.5", "--warmup", "0", "--variant", "s40",
                       "--precision", "int8", "--out", str(tmp_path / "r.json")])
    assert (a.batch, a.duration, a.warmup, a.variant, a.precision) == ([1, 4, 16], 2.5, 0, "s40", "int8")


@pytest.mark.parametrize("args,match", [(["e.plan", "--batch", "0"], "integers >= 1"),
                                        (["e.plan", "--batch", "1,x"], "comma-separated"),
                                        (["e.plan", "--iters", "0"], "must be > 0"),
                                        (["e.plan", "--warmup", "-1"], "--warmup"),
                                        ([], "engine")])
def test_bad_arguments_are_one_line(args, match):
    p = run_script(*args)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert match in p.stderr and p.stdout == ""


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_missing_tensorrt_is_one_line(tmp_path):
    engine = tmp_path / "model.fp16.b8.plan"
    engine.write_bytes(b"engine bytes")
    p = run_script(str(engine), "--out", str(tmp_path / "out.json"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "'tensorrt'" in p.stderr and "JetPack" in p.stderr
    assert not (tmp_path / "out.json").exists()
    p = run_script(str(tmp_path / "absent.plan"))
    assert p.returncode == 2 and "engine file not found" in p.stderr


def test_does_not_import_vitdeploy():
    """It must run on a board with only tensorrt and numpy: with vitdeploy made unimportable, it still works."""
    code = ("import runpy, sys; sys.modules['vitdeploy'] = None; sys.argv = ['profile_engine.py', '--help']; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "usage: profile_engine.py" in p.stdout, p.stderr


# ------------------------------------------------------------------------------------------------ schema
def test_stats_match_vitdeploy(pe):
    times = list(np.random.default_rng(1).gamma(2.0, 3.0, size=257))
    assert pe.latency_stats(times) == latency_stats(times)
    np.testing.assert_array_equal(pe.make_input(3, (3, 32, 32), seed=5), make_input(3, (3, 32, 32), seed=5))
    assert pe.latency_stats([2.0])["std"] == 0.0


def test_record_has_vitdeploy_profile_keys(pe, tmp_path):
    """The same keys, at every level, as a real `vitdeploy profile` result of an ORT session on the same input."""
    onnx_path = export_onnx(tiny_vit(), tmp_path / "vit.onnx", (3, 32, 32))
    meta = {"kind": "onnx", "precision": "fp32", "sha256": None, "variant": None}
    ours = profile_artifacts([ProfileItem(str(onnx_path), lambda: OrtRunner(onnx_path, threads=1), meta)], [2],
                             warmup=2, iters=4, input_size=(3, 32, 32), show_progress=False)
    with OrtRunner(onnx_path, threads=1) as r:
        times = pe.timed_calls(r.infer, pe.make_input(2, (3, 32, 32)), 2, 4, None)
    theirs = pe.result_record("engines/model.fp16.b8.plan", "fp16", "ab" * 32, "dense", 2, times, 2)
    mine = ours["results"][0]
    assert set(theirs) == set(mine) and set(theirs["latency_ms"]) == set(mine["latency_ms"])
    assert theirs["iters"] == 4 and theirs["warmup"] == 2 and theirs["backend"] == "trt"
    assert theirs["throughput_ips"] == pytest.approx(2000 / theirs["latency_ms"]["mean"])
    assert set(pe.host_info(None, None)) == set(host_info()) | {"jetson"}
    assert {"warmup", "iters", "duration_s", "seed", "input_size", "mode", "rounds", "reference"} == set(ours["settings"])
    assert theirs["mode"] == "sequential" and len(theirs["rounds_ms"]) == 4  # one engine alone: blocks, no pairing
    pe.write_json(tmp_path / "board.json", {"host": pe.host_info(None, None), "results": [theirs], "skipped": []})
    assert json.loads((tmp_path / "board.json").read_text())["results"][0] == theirs
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_precision_from_name(pe):
    assert pe.precision_from_name(Path("engines/model.fp16.b8.plan")) == "fp16"
    assert pe.precision_from_name(Path("model.int8.engine")) == "int8"
    assert pe.precision_from_name(Path("resnet.plan")) == "unknown"


# ------------------------------------------------------------------------------------- power and clocks
NVPMODEL_MAXN = "NV Power Mode: MAXN\n0\n"
NVPMODEL_15W = "NVPM WARN: fan mode is not set!\nNV Fan Mode:quiet\nNV Power Mode: 15W\n2\n"


def test_parse_power_mode(pe):
    assert pe.parse_power_mode(NVPMODEL_MAXN) == {"name": "MAXN", "id": 0}
    assert pe.parse_power_mode(NVPMODEL_15W) == {"name": "15W", "id": 2}
    assert pe.parse_power_mode("nvpmodel: command failed\n") is None


def fake_board(root: Path, cpu_min: int, gpu_min: int) -> Path:
    """A sysfs/procfs tree laid out as on a Jetson Orin (frequencies: CPU in kHz, devfreq in Hz)."""
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    for i in range(2):
        d = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True)
        for k, v in (("cur", 2201600), ("min", cpu_min), ("max", 2201600)):
            (d / f"scaling_{k}_freq").write_text(f"{v}\n")
    d = root / "sys/class/devfreq/17000000.ga10b"
    d.mkdir(parents=True)
    for k, v in (("cur", 1300500000), ("min", gpu_min), ("max", 1300500000)):
        (d / f"{k}_freq").write_text(f"{v}\n")
    return root


def test_clocks_locked_and_unlocked(pe, tmp_path):
    locked = pe.read_clocks(str(fake_board(tmp_path / "a", 2201600, 1300500000)))
    assert locked["locked"] is True and locked["cpu"]["cpu1"]["max_mhz"] == pytest.approx(2201.6)
    assert locked["devfreq"]["17000000.ga10b"]["cur_mhz"] == pytest.approx(1300.5)
    state = pe.jetson_state(str(tmp_path / "a"))
    assert state["board"] == "NVIDIA Jetson AGX Orin Developer Kit" and "advice" not in state
    unlocked = pe.jetson_state(str(fake_board(tmp_path / "b", 115200, 306000000)))
    assert unlocked["locked"] is False and pe.LOCK_ADVICE in unlocked["advice"]
    assert pe.LOCK_ADVICE == "sudo nvpmodel -m 0 && sudo jetson_clocks"
    assert pe.read_clocks(str(tmp_path / "nothing"))["locked"] is None
    assert pe.jetson_state(str(tmp_path / "nothing")) is None  # not a board (and no nvpmodel here)


# ------------------------------------------------------------------------------------------- TensorRT
@pytest.mark.trt
def test_profiles_a_real_engine(tmp_path):
    from test_runners import build_engine

    onnx_path = export_onnx(tiny_vit(), tmp_path / "model.fp32.onnx", (3, 32, 32))
    plan = build_engine(onnx_path, tmp_path / "model.fp32.b8.plan")
    out = tmp_path / "board.json"
    p = run_script(str(plan), "--batch", "1,8,16", "--iters", "5", "--variant", "dense", "--out", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert [(r["batch"], r["precision"], r["variant"]) for r in res["results"]] == [(1, "fp32", "dense"), (8, "fp32", "dense")]
    assert [s["batch"] for s in res["skipped"]] == [16] and res["host"]["gpu"]["capability"]
