"""trtexec command lines and `build_engines.sh`: the same engines as the Python builder, built on the device.

A deploy dir is usually exported on one machine and served on another (a Jetson, a Triton container), and a
TensorRT engine only runs on the GPU model and TensorRT version it was built with. So every deploy dir carries a
script that builds the engines where they will run. Its flags follow `tensorrt_build.build_settings`, so the
script and the Python builder make the same choices. Flags, per NVIDIA's trtexec docs:
- 10.x: `--fp16`, `--int8`, `--stronglyTyped`; `--memPoolSize=workspace:<size>` ("supports the following base-2
  suffixes ... If none of suffixes is appended, the default unit is in MiB"), `--builderOptimizationLevel`,
  `--timingCacheFile`, `--profilingVerbosity=detailed`, `--exportLayerInfo`, `--skipInference`,
  `--useDLACore=N --allowGPUFallback`.
- 11.x: "removes all precision flags (--fp16, --int8, --bf16, --fp8, --int4, --best)" and `--calib`;
  "--stronglyTyped is no longer needed: it is always enabled". Everything else above stays.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Optional

from vitdeploy.deploy.targets import Target
from vitdeploy.deploy.tensorrt_build import build_settings, dla_core_for

_EXPANDED = re.compile(r"^[^\"\\`$]*(\$[A-Z_]+[^\"\\`$]*)+$")  # a word whose only specials are $VARS


@dataclass(frozen=True)
class EngineJob:
    """One engine to build: a graph at one batch profile."""
    onnx: str         # "model.fp16.onnx"
    precision: str    # "fp16"
    profile: dict     # {"name": "b8", "min": 1, "opt": 8, "max": 16}
    engine: str       # "model.fp16.b8.plan"
    layer_info: str   # "model.fp16.b8.layers.json"


def engine_jobs(graphs: list[dict], target: Target, static_batch: Optional[int] = None) -> list[EngineJob]:
    """Every graph at every profile of the target (none for a target without TensorRT); a static-batch graph gets
    one engine at its own batch."""
    if not target.tensorrt:
        return []
    profiles = target.profiles if static_batch is None else [
        {"name": f"b{static_batch}", "min": static_batch, "opt": static_batch, "max": static_batch}]
    jobs = []
    for g in graphs:
        stem = g["file"][:-5] if g["file"].endswith(".onnx") else g["file"]
        for p in profiles:
            jobs.append(EngineJob(g["file"], g["precision"], dict(p), f"{stem}.{p['name']}.plan",
                                  f"{stem}.{p['name']}.layers.json"))
    return jobs


def shape_arg(input_name: str, batch: int, chw: tuple[int, int, int]) -> str:
    """`input:8x3x224x224`, the NxCxHxW spec trtexec takes for --minShapes/--optShapes/--maxShapes/--shapes."""
    return f"{input_name}:{batch}x{'x'.join(str(d) for d in chw)}"


def build_command(job: EngineJob, target: Target, major: int, chw: tuple[int, int, int], input_name: str = "input",
                  static_batch: Optional[int] = None, trtexec: str = "$TRTEXEC",
                  timing_cache: str = "$TIMING_CACHE") -> list[str]:
    """The trtexec argument list that builds `job` on TensorRT `major` (10 or 11) for `target`."""
    s = build_settings(major, job.precision, target)
    cmd = [trtexec, f"--onnx={job.onnx}", f"--saveEngine={job.engine}"]
    if static_batch is None:  # trtexec refuses shapes for a static model
        cmd += [f"--minShapes={shape_arg(input_name, job.profile['min'], chw)}",
                f"--optShapes={shape_arg(input_name, job.profile['opt'], chw)}",
                f"--maxShapes={shape_arg(input_name, job.profile['max'], chw)}"]
    if major == 10 and s["strongly_typed"]:
        cmd.append("--stronglyTyped")
    cmd += [f"--{flag.lower()}" for flag in s["flags"]]
    if s["dla_core"] is not None:
        cmd.append(f"--useDLACore={s['dla_core']}")
        if s["gpu_fallback"]:
            cmd.append("--allowGPUFallback")
    cmd += [f"--memPoolSize=workspace:{target.workspace_mib}M", f"--builderOptimizationLevel={target.opt_level}",
            f"--timingCacheFile={timing_cache}", "--profilingVerbosity=detailed",
            f"--exportLayerInfo={job.layer_info}", "--skipInference"]
    return cmd


def timing_command(job: EngineJob, target: Target, chw: tuple[int, int, int], input_name: str = "input",
                   static_batch: Optional[int] = None, trtexec: str = "$TRTEXEC") -> list[str]:
    """A timing-only run of a built engine at the profile's opt batch: no host<->device copies, spin-wait sync."""
    cmd = [trtexec, f"--loadEngine={job.engine}"]
    if static_batch is None:
        cmd.append(f"--shapes={shape_arg(input_name, job.profile['opt'], chw)}")
    dla = dla_core_for(job.precision, target)
    if dla is not None:
        cmd.append(f"--useDLACore={dla}")
    return cmd + ["--useSpinWait", "--noDataTransfers"]


def shell_line(args: list[str]) -> str:
    """Quote for bash, leaving `$TRTEXEC`-style variables to expand inside double quotes."""
    return " ".join(f'"{a}"' if _EXPANDED.match(a) else shlex.quote(a) for a in args)


# ------------------------------------------------------------------------------------------- the script
_PRELUDE = r'''set -euo pipefail
# The script's own path, taken before the cd below: --help reads the header from it wherever it is run from.
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$SELF")"

die() { echo "error: $*" >&2; exit 2; }
run() { printf '+'; printf ' %q' "$@"; printf '\n'; "$@"; }

TRTEXEC="${TRTEXEC:-trtexec}"
if ! command -v "$TRTEXEC" >/dev/null 2>&1; then
  for candidate in /usr/src/tensorrt/bin/trtexec /usr/local/tensorrt/bin/trtexec /opt/tensorrt/bin/trtexec; do
    if [ -x "$candidate" ]; then TRTEXEC="$candidate"; break; fi
  done
fi

# TensorRT version: trtexec prints "[TensorRT v100300]" (10.3.0; v8601 was 8.6.1) on every run; else python, dpkg.
trt_version() {
  local v
  v=$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n 1 | tr -dc '0-9') || true
  if [ -n "$v" ]; then
    if [ "$v" -ge 100000 ]; then echo "$((v / 10000)).$((v / 100 % 100)).$((v % 100))"
    else echo "$((v / 1000)).$((v / 100 % 10)).$((v % 100))"; fi
    return 0
  fi
  v=$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null) || true
  [ -n "$v" ] || v=$(dpkg-query -W -f='${Version}' libnvinfer-bin 2>/dev/null) || true
  [ -n "$v" ] || v=$(dpkg-query -W -f='${Version}' tensorrt 2>/dev/null) || true
  echo "${v%%-*}"
}

# Timing caches hold for one GPU model and TensorRT version only, so the file name carries both.
device_id() {
  local name="" cc=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || true
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '.') || true
  fi
  if [ -z "$name" ] && [ -r /proc/device-tree/model ]; then name=$(tr -d '\0' </proc/device-tree/model); fi
  echo "${name:-gpu}${cc:+-sm$cc}" | tr '[:upper:]' '[:lower:]' |
    sed -e 's/[^a-z0-9.]\{1,\}/-/g' -e 's/^-//' -e 's/-$//'
}

setup() {
  command -v "$TRTEXEC" >/dev/null 2>&1 ||
    die "trtexec not found (JetPack and NGC containers: /usr/src/tensorrt/bin); set TRTEXEC=/path/to/trtexec"
  TRT_VERSION="${TRT_VERSION:-$(trt_version)}"
  TRT_MAJOR="${TRT_MAJOR:-${TRT_VERSION%%.*}}"
  [ -n "$TRT_MAJOR" ] || die "cannot tell the TensorRT version; set TRT_MAJOR=10 or TRT_MAJOR=11"
  mkdir -p timing_cache
  TIMING_CACHE="timing_cache/$(device_id)-trt${TRT_VERSION:-$TRT_MAJOR}.cache"
  echo "TensorRT ${TRT_VERSION:-$TRT_MAJOR} (major $TRT_MAJOR), timing cache $TIMING_CACHE"
}

# install_plan ENGINE MODEL_DIR < config.pbtxt: serve ENGINE from the Triton model dir instead of the ONNX graph.
install_plan() {
  local engine=$1 dir=$2
  [ -f "$engine" ] || die "$engine is missing: run ./build_engines.sh build first"
  mkdir -p "$dir/1"
  rm -f "$dir/1/model.onnx" "$dir"/1/*.onnx.data
  cp "$engine" "$dir/1/model.plan.tmp" && mv "$dir/1/model.plan.tmp" "$dir/1/model.plan"
  cat >"$dir/config.pbtxt.tmp" && mv "$dir/config.pbtxt.tmp" "$dir/config.pbtxt"
  echo "triton: $dir serves $engine (tensorrt_plan)"
}
'''

_DISPATCH = r'''
case "${1:-build}" in
  build) build ;;
  bench) bench ;;
  triton) install_triton ;;
  all) build; install_triton; bench ;;
  -h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d' ;;
  *) die "unknown step '$1' (build, bench, triton, all)" ;;
esac
'''


def _function(name: str, comment: str, lines: list[str]) -> str:
    body = "\n".join(f"  {line}" for line in lines) if lines else "  :"
    return f"# {comment}\n{name}() {{\n{body}\n}}\n"


def render_script(jobs: list[EngineJob], target: Target, chw: tuple[int, int, int], input_name: str = "input",
                  static_batch: Optional[int] = None, triton_plans: Optional[list[tuple[str, str, str]]] = None,
                  header: str = "") -> str:
    """The text of build_engines.sh: build (per TensorRT major the target runs), bench and triton steps.

    `triton_plans` lists (engine file, Triton model dir, config.pbtxt text for that engine) per served model.
    """
    majors = [int(m) for m in target.tensorrt]
    parts = ["#!/usr/bin/env bash", *(f"# {line}" if line else "#" for line in header.splitlines()),
             "# Steps: ./build_engines.sh [build|bench|triton|all]   (default: build)",
             "#   build   build every engine below with trtexec, for the TensorRT major version found here",
             "#   bench   timing-only trtexec run of each built engine (no host<->device copies)",
             "#   triton  serve the built engines from triton/ (tensorrt_plan) instead of the ONNX graphs",
             "#   all     build, triton, bench",
             "# Environment: TRTEXEC=/path/to/trtexec, TRT_MAJOR=10|11 (skips version detection).",
             _PRELUDE]
    cases = []
    for major in majors:
        lines = []
        for j in jobs:
            why = build_settings(major, j.precision, target)["why"]
            lines += [f"echo {shlex.quote(f'building {j.engine} ({why})')}",
                      f"run {shell_line(build_command(j, target, major, chw, input_name, static_batch))}"]
        parts.append(_function(f"build_trt{major}", f"TensorRT {major}.x engines", lines))
        cases.append(f"  {major}) build_trt{major} ;;")
    if majors:
        wrong = f"target {target.name} has engine commands for TensorRT {' and '.join(map(str, majors))}; " \
                "this machine has TensorRT "
        cases.append(f'  *) die {shlex.quote(wrong)}"${{TRT_VERSION:-$TRT_MAJOR}}" ;;')
        build = ["setup", 'case "$TRT_MAJOR" in', *cases, "esac"]
    else:
        none = f"target {target.name} builds no TensorRT engines: serve the ONNX graphs (triton/)"
        build = [f"echo {shlex.quote(none)}"]
    parts.append(_function("build", "build the engines for the TensorRT major version found here", build))
    bench = []
    for j in jobs:
        missing = f"{j.engine} is missing: run ./build_engines.sh build first"
        bench.append(f"[ -f {shlex.quote(j.engine)} ] || die {shlex.quote(missing)}")
        bench.append(f"run {shell_line(timing_command(j, target, chw, input_name, static_batch))}")
    parts.append(_function("bench", "timing-only runs at each profile's opt batch", bench))
    installs = [f"install_plan {shlex.quote(engine)} {shlex.quote(model_dir)} <<'PBTXT'\n{config.rstrip()}\nPBTXT"
                for engine, model_dir, config in (triton_plans or [])]
    parts.append(_function("install_triton", "put the serving engines into the Triton model repository", installs))
    parts.append(_DISPATCH)
    return "\n".join(parts)
