"""trtexec command lines and build_engines.sh, checked without TensorRT: the flags each TensorRT major version
accepts (parsed back from the script with shlex), `bash -n`, and the script run end to end.

TensorRT cannot be installed here, so the end-to-end runs put a stand-in `trtexec` (and `nvidia-smi`) first on PATH:
a few lines of bash that print the version banner the real one prints and create the files its flags name. What is
under test is the script: version detection, dispatch, file names, the timing cache name, the Triton step.
"""
import os
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest

from vitdeploy.deploy.targets import load_target, target_from_dict
from vitdeploy.deploy.tensorrt_build import build_settings, timing_cache_name, trt_major
from vitdeploy.deploy.trtexec import build_command, engine_jobs, render_script, shell_line, timing_command
from vitdeploy.deploy.triton import parse_config
from vitdeploy.errors import BackendError

CHW = (3, 32, 32)
GRAPHS = [{"file": f"model.{p}.onnx", "precision": p} for p in ("fp32", "fp16", "int8")]
PRECISION_FLAGS = {"--fp16", "--int8", "--bf16", "--fp8", "--int4", "--best", "--stronglyTyped"}


def flags(cmd):
    return {a.split("=")[0] for a in cmd[1:]}


def arg(cmd, name):
    return next(a.split("=", 1)[1] for a in cmd if a.startswith(name + "="))


# ------------------------------------------------------------------------------------ decisions and flags
def test_trt_major():
    assert trt_major("10.3.0.30") == 10 and trt_major("11.0.0") == 11
    with pytest.raises(BackendError, match="cannot read a TensorRT version"):
        trt_major("ten")


@pytest.mark.parametrize("major,precision,strong,builder_flags", [
    (10, "fp32", False, []),
    (10, "fp16", True, []),               # keeps the FP16 graph's FP32 LayerNorm/Softmax/residuals
    (10, "int8", False, ["INT8", "FP16"]),
    (11, "fp32", True, []), (11, "fp16", True, []), (11, "int8", True, []),  # 11 removed the precision flags
])
def test_build_settings_gpu(major, precision, strong, builder_flags):
    s = build_settings(major, precision, load_target("h100"))
    assert (s["strongly_typed"], s["flags"], s["dla_core"]) == (strong, builder_flags, None)


def test_build_settings_dla():
    agx = load_target("jetson-agx-orin")
    assert build_settings(10, "fp16", agx) | {"why": ""} == {"strongly_typed": False, "flags": ["FP16"], "dla_core": 0,
                                                             "gpu_fallback": True, "why": ""}
    assert build_settings(10, "int8", agx)["flags"] == ["INT8", "FP16"]
    fp32 = build_settings(10, "fp32", agx)
    assert fp32["dla_core"] is None and "DLA runs FP16 and INT8 only" in fp32["why"]
    assert build_settings(11, "fp16", agx)["flags"] == []
    with pytest.raises(BackendError, match="TensorRT 8 is too old"):
        build_settings(8, "fp16", agx)
    with pytest.raises(BackendError, match="unknown precision"):
        build_settings(10, "fp8", agx)


def test_trt10_commands():
    target = load_target("a100")
    jobs = {(j.precision, j.profile["name"]): j for j in engine_jobs(GRAPHS, target)}
    assert len(jobs) == 3 * len(target.profiles)
    fp32, fp16, int8 = (build_command(jobs[p, "b32"], target, 10, CHW) for p in ("fp32", "fp16", "int8"))
    assert fp32[0] == "$TRTEXEC" and not flags(fp32) & PRECISION_FLAGS
    assert flags(fp16) & PRECISION_FLAGS == {"--stronglyTyped"}
    assert flags(int8) & PRECISION_FLAGS == {"--int8", "--fp16"}
    assert (arg(fp16, "--onnx"), arg(fp16, "--saveEngine")) == ("model.fp16.onnx", "model.fp16.b32.plan")
    assert [arg(fp16, f"--{k}Shapes") for k in ("min", "opt", "max")] == [
        "input:1x3x32x32", "input:32x3x32x32", "input:64x3x32x32"]
    assert arg(fp16, "--memPoolSize") == "workspace:8192M" and arg(fp16, "--builderOptimizationLevel") == "4"
    assert arg(fp16, "--profilingVerbosity") == "detailed" and arg(fp16, "--exportLayerInfo").endswith(".layers.json")
    assert "--skipInference" in fp16 and "--useDLACore" not in flags(fp16)


def test_trt11_commands_have_no_precision_flags():
    target = load_target("h100")
    for job in engine_jobs(GRAPHS, target):
        cmd = build_command(job, target, 11, CHW)
        assert not flags(cmd) & PRECISION_FLAGS, cmd  # removed in 11; strong typing is always on
        assert {"--onnx", "--saveEngine", "--minShapes", "--timingCacheFile", "--memPoolSize"} <= flags(cmd)


def test_dla_and_static_commands():
    agx = load_target("jetson-agx-orin")
    job = next(j for j in engine_jobs(GRAPHS, agx) if j.precision == "int8" and j.profile["name"] == "b8")
    cmd = build_command(job, agx, 10, CHW)
    assert {"--useDLACore", "--allowGPUFallback", "--int8", "--fp16"} <= flags(cmd) and arg(cmd, "--useDLACore") == "0"
    assert "--useDLACore=0" in timing_command(job, agx, CHW)
    fp32 = next(j for j in engine_jobs(GRAPHS, agx) if j.precision == "fp32")
    assert "--useDLACore" not in flags(build_command(fp32, agx, 10, CHW))
    static = engine_jobs(GRAPHS[:1], load_target("a100"), static_batch=4)
    assert [j.profile for j in static] == [{"name": "b4", "min": 4, "opt": 4, "max": 4}]
    cmd = build_command(static[0], load_target("a100"), 10, CHW, static_batch=4)
    assert not flags(cmd) & {"--minShapes", "--optShapes", "--maxShapes"}  # trtexec refuses shapes for a static model
    assert "--shapes" not in flags(timing_command(static[0], load_target("a100"), CHW, static_batch=4))


def test_timing_command():
    target = load_target("a100")
    job = next(j for j in engine_jobs(GRAPHS, target) if j.profile["name"] == "b32")
    cmd = timing_command(job, target, CHW)
    assert cmd == ["$TRTEXEC", f"--loadEngine={job.engine}", "--shapes=input:32x3x32x32", "--useSpinWait",
                   "--noDataTransfers"]


def test_shell_line_round_trips():
    args = ["$TRTEXEC", "--onnx=model.fp16.onnx", "--timingCacheFile=$TIMING_CACHE", "--x=a b"]
    assert shlex.split(shell_line(args)) == args


# ------------------------------------------------------------------------------------------------ the script
def script_for(target, static_batch=None):
    jobs = engine_jobs(GRAPHS, target, static_batch)
    plans = [(j.engine, f"triton/vit_{j.precision}", f'name: "vit_{j.precision}"\nplatform: "tensorrt_plan"\n')
             for j in jobs if j.profile == target.serving_profile]
    return jobs, render_script(jobs, target, CHW, static_batch=static_batch, triton_plans=plans, header="test")


def function_commands(script, name):
    body = script.split(f"\n{name}() {{\n", 1)[1].split("\n}\n", 1)[0]
    return [shlex.split(line.strip()[4:]) for line in body.splitlines() if line.strip().startswith("run ")]


@pytest.mark.parametrize("name", ["cpu", "jetson-orin-nano", "jetson-agx-orin", "a100", "h100"])
def test_script_is_valid_bash_and_has_each_command(name, tmp_path):
    target = load_target(name)
    jobs, script = script_for(target)
    path = tmp_path / "build_engines.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    for major in (10, 11):
        cmds = function_commands(script, f"build_trt{major}") if f"build_trt{major}()" in script else []
        if str(major) in target.tensorrt:
            assert cmds == [build_command(j, target, major, CHW) for j in jobs]
        else:
            assert not cmds
    assert function_commands(script, "bench") == [timing_command(j, target, CHW) for j in jobs]


FAKE_TRTEXEC = textwrap.dedent("""\
    #!/usr/bin/env bash
    # stand-in for trtexec: the banner the real one prints, and the files its flags name
    echo "&&&& RUNNING TensorRT.trtexec [TensorRT v$FAKE_TRT] # trtexec $*"
    [ "${1:-}" = "--help" ] && exit 0
    printf '%q ' "$@" >>"$FAKE_LOG"; echo >>"$FAKE_LOG"
    for a in "$@"; do
      case "$a" in
        --saveEngine=*) echo "plan for $*" >"${a#*=}" ;;
        --exportLayerInfo=*) echo '{"Layers": []}' >"${a#*=}" ;;
        --timingCacheFile=*) echo cache >>"${a#*=}" ;;
      esac
    done
    """)
FAKE_SMI = textwrap.dedent("""\
    #!/usr/bin/env bash
    case "$*" in *compute_cap*) echo "9.0" ;; *) echo "NVIDIA H100 80GB HBM3" ;; esac
    """)


@pytest.fixture
def device(tmp_path):
    """A folder with the script's neighbours and a PATH whose trtexec and nvidia-smi are the stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("trtexec", FAKE_TRTEXEC), ("nvidia-smi", FAKE_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "deploy"
    work.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "calls.log"), "HOME": str(tmp_path)}

    def run(script, *args, trt="100300", **extra):
        (work / "build_engines.sh").write_text(script)
        return subprocess.run(["bash", str(work / "build_engines.sh"), *args], capture_output=True, text=True,
                              env={**env, "FAKE_TRT": trt, **extra})

    def calls():
        log = Path(env["FAKE_LOG"])
        return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
    return work, run, calls


def test_script_builds_on_trt10_then_serves_and_times(device):
    work, run, calls = device
    target = load_target("h100")
    jobs, script = script_for(target)
    result = run(script, "all")
    assert result.returncode == 0, result.stderr
    assert "TensorRT 10.3.0 (major 10)" in result.stdout
    cache = "timing_cache/" + timing_cache_name("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0")
    built = [c for c in calls() if any(a.startswith("--saveEngine=") for a in c)]
    assert built == [build_command(j, target, 10, CHW, timing_cache=cache)[1:] for j in jobs]
    assert (work / cache).read_text().count("cache") == len(jobs)  # one timing cache, shared by every build
    assert all((work / j.engine).is_file() for j in jobs)
    served = work / "triton/vit_fp16/1/model.plan"
    assert served.read_text() == (work / "model.fp16.b64.plan").read_text()
    assert parse_config((work / "triton/vit_fp16/config.pbtxt").read_text())["platform"] == "tensorrt_plan"
    timed = [c for c in calls() if any(a.startswith("--loadEngine=") for a in c)]
    assert timed == [timing_command(j, target, CHW)[1:] for j in jobs]


def test_script_picks_trt11_block(device):
    work, run, calls = device
    target = load_target("a100")
    result = run(script_for(target)[1], trt="110100")
    assert result.returncode == 0, result.stderr
    assert "TensorRT 11.1.0 (major 11)" in result.stdout
    assert calls() and all(not {a.split("=")[0] for a in c} & PRECISION_FLAGS for c in calls())


def test_script_refuses_a_version_the_target_does_not_run(device):
    work, run, calls = device
    result = run(script_for(load_target("jetson-orin-nano"))[1], trt="110000")
    assert result.returncode == 2 and not calls()
    assert result.stderr.strip() == ("error: target jetson-orin-nano has engine commands for TensorRT 10; "
                                     "this machine has TensorRT 11.0.0")


def test_script_user_errors(device, tmp_path):
    work, run, calls = device
    script = script_for(load_target("a100"))[1]
    result = run(script, "bench")
    assert result.returncode == 2 and "is missing: run ./build_engines.sh build first" in result.stderr
    result = run(script, "triton")
    assert result.returncode == 2 and "is missing" in result.stderr and not (work / "triton").exists()
    result = run(script, "nonsense")
    assert result.returncode == 2 and "unknown step 'nonsense'" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(script, PATH=f"{empty}:/usr/bin:/bin", TRTEXEC="trtexec")
    assert result.returncode == 2 and result.stderr.startswith("error: trtexec not found")
    assert run(script, TRT_MAJOR="10", TRT_VERSION="10.7.0").returncode == 0  # detection can be skipped


def test_cpu_script_builds_nothing(device):
    work, run, calls = device
    result = run(script_for(load_target("cpu"))[1], "all")
    assert result.returncode == 0 and "builds no TensorRT engines" in result.stdout and not calls()


def test_user_target_without_dla_fallback(tmp_path):
    t = target_from_dict({"device": "jetson", "tensorrt": ["10"], "dla_core": 1,
                          "profiles": [{"name": "b2", "min": 2, "opt": 2, "max": 2}]}, "'x'")
    job = next(j for j in engine_jobs(GRAPHS, t) if j.precision == "fp16")
    cmd = build_command(job, t, 10, CHW)
    assert "--useDLACore=1" in cmd and "--allowGPUFallback" not in cmd
    assert os.path.basename(job.engine) == "model.fp16.b2.plan"
