#!/usr/bin/env python3
"""Standalone TensorRT engine profiler for Jetson boards (and any machine with TensorRT).

Needs only `tensorrt` and `numpy`: the CUDA runtime is reached through ctypes (libcudart.so), so a board with JetPack
and nothing else runs it. Copy this one file next to an engine and run:

    python3 profile_engine.py model.fp16.b8.plan --batch 1,8 --iters 200 --variant dense --out orin.json

It writes the JSON schema of `vitdeploy profile --out`, so `vitdeploy report RUN --profile orin.json` puts the board's
numbers next to everything else (`--variant` names the run dir the engine was built from). It records the power mode
(`nvpmodel -q`) and the clocks, and says how to lock them when they are not locked: an unlocked board scales its
clocks with load, and its latencies then measure the governor, not the model.

Each timed call is host to host: copy the batch into pinned memory, to the GPU, run the engine
(`execute_async_v3`), copy the logits back, wait for the stream; the same span vitdeploy's runners time.
This file must not import vitdeploy.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

PERCENTILES = (50, 90, 95, 99)
LOCK_ADVICE = "sudo nvpmodel -m 0 && sudo jetson_clocks"
PRECISION_TOKENS = ("fp32", "fp16", "int8", "best", "bf16", "fp8")


class ProfilerError(Exception):
    """A problem the user can fix; main() prints it as one line and exits with status 2."""


# ------------------------------------------------------------------------------ measurement (vitdeploy's schema)
def make_input(batch: int, input_size: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The benchmark batch vitdeploy uses too: seeded standard-normal float32, NCHW (never zeros)."""
    return np.random.default_rng(seed).standard_normal((batch, *input_size), dtype=np.float32)


def latency_stats(times_ms: Iterable[float]) -> dict[str, float]:
    """p50/p90/p95/p99/mean/std/min/max of latencies in ms (numpy's linear percentiles, sample std)."""
    t = np.asarray(list(times_ms), dtype=np.float64)
    if t.size == 0:
        raise ProfilerError("no latency samples to summarise")
    stats = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(t, PERCENTILES))}
    stats.update(mean=float(t.mean()), std=float(t.std(ddof=1)) if t.size > 1 else 0.0,
                 min=float(t.min()), max=float(t.max()))
    return stats


def timed_calls(infer: Callable[[np.ndarray], Any], x: np.ndarray, warmup: int, iters: int,
                duration: float | None) -> list[float]:
    """Milliseconds of each call of `infer(x)` after `warmup` untimed calls; `duration` seconds replaces `iters`."""
    for _ in range(max(1, warmup)):
        infer(x)
    times: list[float] = []
    clock = time.perf_counter
    start = clock()
    while (clock() - start < duration) if duration is not None else (len(times) < iters):
        t0 = clock()
        infer(x)
        times.append((clock() - t0) * 1000.0)
    return times


def result_record(artifact: str, precision: str, sha256: str | None, variant: str | None, batch: int,
                  times_ms: list[float], warmup: int) -> dict[str, Any]:
    """One measurement in the exact layout of a `vitdeploy profile` result."""
    stats = latency_stats(times_ms)
    return {
        "artifact": artifact, "backend": "trt", "kind": "engine", "precision": precision, "sha256": sha256,
        "variant": variant, "batch": batch, "iters": len(times_ms), "warmup": max(1, warmup), "latency_ms": stats,
        "throughput_ips": batch * 1000.0 / stats["mean"] if stats["mean"] > 0 else float("inf"),
        "threads": None, "seconds": float(sum(times_ms) / 1000.0),
        "mode": "sequential", "rounds_ms": block_medians(times_ms),
    }


def block_medians(times_ms: list[float], blocks: int = 20) -> list[float]:
    """Medians of `blocks` consecutive stretches of the calls, in time order (as `vitdeploy profile` records them):
    one engine timed alone cannot be paired with another, but its blocks show whether the board drifted."""
    blocks = max(1, min(blocks, len(times_ms)))
    base, extra = divmod(len(times_ms), blocks)
    out, start = [], 0
    for b in range(blocks):
        n = base + (1 if b < extra else 0)
        out.append(float(np.median(times_ms[start:start + n])))
        start += n
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def precision_from_name(path: Path) -> str:
    """fp16 from `model.fp16.b8.plan` (vitdeploy's naming); 'unknown' otherwise: pass --precision."""
    return next((t for t in path.name.split(".") if t in PRECISION_TOKENS), "unknown")


def write_json(path: Path, obj: Any) -> None:
    """Write to a temporary file beside `path` and rename it into place: never a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------- Jetson power and clocks
def parse_power_mode(text: str) -> dict[str, Any] | None:
    """`nvpmodel -q` output ("NV Power Mode: MAXN" then the mode id on a line of its own) -> {name, id}."""
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("NV Power Mode"):
            name = line.split(":", 1)[1].strip() if ":" in line else ""
            mode_id = next((int(s) for s in lines[i + 1:] if s.isdigit()), None)
            return {"name": name or None, "id": mode_id}
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def read_clocks(root: str = "/") -> dict[str, Any]:
    """CPU (cpufreq, kHz) and devfreq (GPU and other engines, Hz) clocks in MHz, and whether they look locked.

    jetson_clocks pins each clock's minimum to its maximum, so "locked" means min == max for every CPU core and
    every GPU devfreq device found; None when this is no board with such files.
    """
    cpus = {}
    for d in sorted(glob.glob(os.path.join(root, "sys/devices/system/cpu/cpu[0-9]*/cpufreq"))):
        vals = [_read_int(os.path.join(d, f"scaling_{k}_freq")) for k in ("cur", "min", "max")]
        if None not in vals:
            cpus[Path(d).parent.name] = dict(zip(("cur_mhz", "min_mhz", "max_mhz"), (v / 1000 for v in vals)))
    devfreq = {}
    for d in sorted(glob.glob(os.path.join(root, "sys/class/devfreq/*"))):
        vals = [_read_int(os.path.join(d, f"{k}_freq")) for k in ("cur", "min", "max")]
        if None not in vals:
            devfreq[Path(d).name] = dict(zip(("cur_mhz", "min_mhz", "max_mhz"), (v / 1e6 for v in vals)))
    gpus = {k: v for k, v in devfreq.items() if any(s in k.lower() for s in ("gpu", "ga10b", "gv11b", "gp10b", "gk20a"))}
    pinned = [c["min_mhz"] == c["max_mhz"] for c in (*cpus.values(), *gpus.values())]
    return {"cpu": cpus, "devfreq": devfreq, "locked": all(pinned) if pinned and gpus else None}


def _command(args: list[str]) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def jetson_state(root: str = "/") -> dict[str, Any] | None:
    """Power mode, clocks and `jetson_clocks --show` of a Jetson board; None elsewhere."""
    model = Path(root, "proc/device-tree/model")
    board = model.read_text(errors="replace").strip("\x00\n ") if model.is_file() else None
    query = _command(["nvpmodel", "-q"])
    if board is None and query is None:
        return None
    clocks = read_clocks(root)
    power = parse_power_mode(query) if query else None
    state = {"board": board, "power_mode": power, "clocks": clocks, "locked": clocks["locked"],
             "jetson_clocks_show": _command(["jetson_clocks", "--show"])}
    if clocks["locked"] is not True:
        what = "are not locked" if clocks["locked"] is False else "could not be read"
        state["advice"] = f"clocks {what}, so latencies may follow the governor, not the model; lock them with: {LOCK_ADVICE}"
    return state


# -------------------------------------------------------------------------------------------- CUDA via ctypes
class CudaRuntime:
    """The few CUDA runtime calls a profiler needs, through ctypes, with errors turned into ProfilerError."""

    H2D, D2H = 1, 2
    _SIGNATURES = {
        "cudaGetDeviceCount": [ctypes.POINTER(ctypes.c_int)],
        "cudaMalloc": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t],
        "cudaFree": [ctypes.c_void_p],
        "cudaMallocHost": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t],
        "cudaFreeHost": [ctypes.c_void_p],
        "cudaMemcpyAsync": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p],
        "cudaStreamCreate": [ctypes.POINTER(ctypes.c_void_p)],
        "cudaStreamSynchronize": [ctypes.c_void_p],
        "cudaStreamDestroy": [ctypes.c_void_p],
        "cudaRuntimeGetVersion": [ctypes.POINTER(ctypes.c_int)],
        "cudaDeviceGetAttribute": [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int],
        "cudaMemGetInfo": [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
    }

    def __init__(self) -> None:
        self.lib = load_cudart()
        for name, argtypes in self._SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        self.lib.cudaGetErrorString.argtypes, self.lib.cudaGetErrorString.restype = [ctypes.c_int], ctypes.c_char_p

    def call(self, name: str, *args: Any) -> None:
        rc = getattr(self.lib, name)(*args)
        if rc != 0:
            raise ProfilerError(f"{name} failed: {self.lib.cudaGetErrorString(rc).decode()} (CUDA error {rc})")

    def device_count(self) -> int:
        n = ctypes.c_int(0)
        self.call("cudaGetDeviceCount", ctypes.byref(n))
        return n.value

    def malloc(self, nbytes: int, pinned_host: bool = False) -> int:
        ptr = ctypes.c_void_p()
        self.call("cudaMallocHost" if pinned_host else "cudaMalloc", ctypes.byref(ptr), ctypes.c_size_t(max(1, nbytes)))
        return int(ptr.value)

    def free(self, ptr: int, pinned_host: bool = False) -> None:
        self.call("cudaFreeHost" if pinned_host else "cudaFree", ctypes.c_void_p(ptr))

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.call("cudaStreamCreate", ctypes.byref(s))
        return int(s.value or 0)

    def copy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self.call("cudaMemcpyAsync", ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind,
                  ctypes.c_void_p(stream))

    def info(self) -> dict[str, Any]:
        """Runtime version, compute capability and memory of device 0."""
        ver, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.call("cudaRuntimeGetVersion", ctypes.byref(ver))
        self.call("cudaDeviceGetAttribute", ctypes.byref(major), 75, 0)  # cudaDevAttrComputeCapabilityMajor
        self.call("cudaDeviceGetAttribute", ctypes.byref(minor), 76, 0)  # cudaDevAttrComputeCapabilityMinor
        self.call("cudaMemGetInfo", ctypes.byref(free), ctypes.byref(total))
        return {"cuda": f"{ver.value // 1000}.{ver.value % 1000 // 10}", "capability": f"{major.value}.{minor.value}",
                "memory_gib": round(total.value / 2**30, 1), "count": self.device_count()}


def load_cudart() -> ctypes.CDLL:
    """libcudart from the system (JetPack: /usr/local/cuda), a pip nvidia-cuda-runtime wheel, or the loader path."""
    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12",
             "libcudart.so.11.0", "/usr/local/cuda/lib64/libcudart.so",
             *sorted(glob.glob("/usr/local/cuda*/targets/*/lib/libcudart.so*")),
             *sorted(p for d in sys.path for p in glob.glob(os.path.join(d, "nvidia/cuda_runtime/lib/libcudart.so*")))]
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise ProfilerError("the CUDA runtime (libcudart.so) was not found; on a Jetson it is in /usr/local/cuda/lib64 "
                        "(JetPack), elsewhere install the CUDA toolkit or add its lib folder to LD_LIBRARY_PATH")


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt

        trt.Runtime  # noqa: B018 - placeholder wheels import but have no runtime
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProfilerError(f"this profiler needs TensorRT's Python package 'tensorrt', which is not usable here "
                            f"({detail}); on a Jetson it comes with JetPack (python3-libnvinfer)") from None
    return trt


# -------------------------------------------------------------------------------------------------- the engine
class EngineRunner:
    """A deserialised engine with pinned host and device buffers sized for its largest batch."""

    def __init__(self, path: Path, trt: Any, cuda: CudaRuntime, dla_core: int | None = None) -> None:
        self.path, self.trt, self.cuda = path, trt, cuda
        self._allocs: list[tuple[int, bool]] = []
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        if dla_core is not None:  # before deserialising: the runtime places a DLA engine's layers on this core
            self.runtime.DLA_core = int(dla_core)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ProfilerError(f"TensorRT {trt.__version__} could not deserialise {path}: an engine runs only with "
                                "the TensorRT version and GPU it was built with; rebuild it on this board")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not self.outputs:
            raise ProfilerError(f"{path.name}: expected one image input and an output, found {inputs} and {self.outputs}")
        self.input = inputs[0]
        shape = tuple(self.engine.get_tensor_shape(self.input))
        if len(shape) != 4 or min(shape[1:]) < 1:
            raise ProfilerError(f"{path.name}: input {self.input!r} has shape {shape}, expected N x C x H x W")
        if shape[0] == -1:
            low, _, high = self.engine.get_tensor_profile_shape(self.input, 0)
            self.batch_range = (int(low[0]), int(high[0]))
        else:
            self.batch_range = (shape[0], shape[0])
        self.input_size = tuple(int(s) for s in shape[1:])
        self.context = self.engine.create_execution_context()
        self.stream = cuda.stream()
        self._buffers(names)

    def _buffers(self, names: list[str]) -> None:
        """Host (pinned) and device buffers for the largest batch; device addresses are bound once."""
        self.context.set_input_shape(self.input, (self.batch_range[1], *self.input_size))
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, int] = {}
        for name in names:
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            dev, host = self.cuda.malloc(nbytes), self.cuda.malloc(nbytes, pinned_host=True)
            self._allocs += [(dev, False), (host, True)]
            self.host[name] = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(host)).view(dtype)
            self.device[name] = dev
            self.context.set_tensor_address(name, dev)

    def infer(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if not self.batch_range[0] <= n <= self.batch_range[1]:
            raise ProfilerError(f"{self.path.name} takes batches of {self.batch_range[0]} to {self.batch_range[1]}, got {n}")
        inp = self.host[self.input][: x.size]
        inp[...] = x.reshape(-1)  # casts to the engine's input dtype (fp16 I/O engines)
        self.context.set_input_shape(self.input, tuple(x.shape))
        self.cuda.copy_async(self.device[self.input], inp.ctypes.data, inp.nbytes, CudaRuntime.H2D, self.stream)
        if not self.context.execute_async_v3(self.stream):
            raise ProfilerError(f"TensorRT failed to run {self.path.name}")
        out_shape = tuple(self.context.get_tensor_shape(self.outputs[0]))
        out = self.host[self.outputs[0]][: int(np.prod(out_shape))]
        self.cuda.copy_async(out.ctypes.data, self.device[self.outputs[0]], out.nbytes, CudaRuntime.D2H, self.stream)
        self.cuda.call("cudaStreamSynchronize", ctypes.c_void_p(self.stream))
        return out.reshape(out_shape).astype(np.float32)

    def close(self) -> None:
        self.context = self.engine = self.runtime = None
        for ptr, pinned in self._allocs:
            self.cuda.free(ptr, pinned_host=pinned)
        self._allocs = []
        if self.stream:
            self.cuda.call("cudaStreamDestroy", ctypes.c_void_p(self.stream))
            self.stream = 0


# ------------------------------------------------------------------------------------------------------ host
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and val.strip():
                    return val.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _driver() -> str | None:
    for path, pick in (("/proc/driver/nvidia/version", lambda s: next((t for t in s.split() if t[:1].isdigit() and "." in t), None)),
                       ("/etc/nv_tegra_release", lambda s: s.splitlines()[0].strip("# ").split(",")[0] if s else None)):
        try:
            with open(path) as f:
                found = pick(f.read())
            if found:
                return found
        except OSError:
            continue
    return None


def host_info(cuda: CudaRuntime | None, trt: Any, root: str = "/") -> dict[str, Any]:
    """vitdeploy's host record (cpu, cores, threads, platform, machine, gpu, versions) plus the Jetson state."""
    jetson = jetson_state(root)
    gpu = None
    if cuda is not None:
        gpu = {"name": (jetson or {}).get("board") or _command_first(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]),
               "driver": _driver(), **cuda.info()}
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return {
        "cpu": _cpu_model(), "logical_cores": len(cores), "physical_cores": len(cores), "threads": None,
        "platform": platform.platform(), "machine": platform.machine(), "gpu": gpu,
        "versions": {"tensorrt": getattr(trt, "__version__", None), "numpy": np.__version__,
                     "python": platform.python_version(), "profiler": "profile_engine.py"},
        "jetson": jetson,
    }


def _command_first(args: list[str]) -> str | None:
    out = _command(args)
    return out.strip().splitlines()[0] if out and out.strip() else None


# ------------------------------------------------------------------------------------------------------ main
def _export_record(path: Path) -> dict[str, Any] | None:
    """export.json of the deploy dir an engine sits in (beside it, or one folder up for deploy/engines/)."""
    for folder in (path.parent, path.parent.parent):
        try:
            record = json.loads((folder / "export.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return None


def dla_core_of(path: Path, given: int | None = None) -> int | None:
    """The DLA core an engine runs on: `given` (--dla-core), else what its deploy dir says: the engine's own
    record, or the target's dla_core for a non-fp32 engine (vitdeploy puts only fp16/int8 engines on the DLA)."""
    if given is not None:
        return given
    record = _export_record(path) or {}
    for engine in record.get("engines") or []:
        if isinstance(engine, dict) and engine.get("file") and Path(str(engine["file"])).name == path.name:
            core = engine.get("dla_core")
            return core if isinstance(core, int) and not isinstance(core, bool) else None
    core = (record.get("target") or {}).get("dla_core")
    if isinstance(core, int) and not isinstance(core, bool) and precision_from_name(path) in ("fp16", "int8"):
        return core
    return None


def profile_engine(path: Path, batches: list[int], warmup: int, iters: int, duration: float | None, seed: int,
                   variant: str | None, precision: str | None, dla_core: int | None = None) -> dict[str, Any]:
    """Profile one engine at each batch its optimisation profile takes; the rest are listed as skipped."""
    trt = import_tensorrt()
    cuda = CudaRuntime()
    if cuda.device_count() < 1:
        raise ProfilerError("no CUDA device is visible to this process")
    dla_core = dla_core_of(path, dla_core)
    runner = EngineRunner(path, trt, cuda, dla_core)
    results, skipped = [], []
    digest = sha256_file(path)
    try:
        for b in batches:
            low, high = runner.batch_range
            if not low <= b <= high:
                skipped.append({"artifact": str(path), "backend": "trt", "batch": b, "reason": f"takes batches {low} to {high}"})
                continue
            print(f"profiling {path.name} batch {b} ...", file=sys.stderr, flush=True)
            times = timed_calls(runner.infer, make_input(b, runner.input_size, seed), warmup, iters, duration)
            results.append(result_record(str(path), precision or precision_from_name(path), digest, variant, b, times, warmup))
    finally:
        runner.close()
    settings = {"warmup": warmup, "iters": None if duration is not None else iters, "duration_s": duration,
                "seed": seed, "input_size": list(runner.input_size), "dla_core": dla_core, "mode": "sequential"}
    return {"host": host_info(cuda, trt), "settings": settings, "results": results, "skipped": skipped}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every vitdeploy command
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _batches(spec: str) -> list[int]:
    try:
        values = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{spec}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got '{spec}'")
    return values


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{s}'") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="profile_engine.py", description=__doc__.split("\n\n")[0])
    p.add_argument("engine", type=Path, help="TensorRT engine (.plan / .engine)")
    p.add_argument("--batch", type=_batches, default=[1, 8], help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before each measurement (default 10)")
    p.add_argument("--iters", type=_positive(int), default=200, help="timed calls per batch (default 200)")
    p.add_argument("--duration", type=_positive(float), help="seconds per batch instead of --iters")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-normal input (default 0)")
    p.add_argument("--variant", help="name of the vitdeploy run dir the engine was built from (for vitdeploy report)")
    p.add_argument("--precision", help="precision label (default: from the file name, e.g. model.fp16.b8.plan)")
    p.add_argument("--out", type=Path, help="write the results as JSON (vitdeploy profile's schema)")
    p.add_argument("--dla-core", type=int, help="DLA core to run a DLA engine on (default: the one its deploy dir's "
                   "export.json records; none for GPU engines)")
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.dla_core is not None and args.dla_core < 0:
        p.error(f"--dla-core must be >= 0, got {args.dla_core}")
    return args


def _print_table(result: dict[str, Any]) -> None:
    print(f"{'batch':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8} {'img/s':>9}   (ms)")
    for r in result["results"]:
        lat = r["latency_ms"]
        print(f"{r['batch']:>5} {lat['p50']:>8.3f} {lat['p90']:>8.3f} {lat['p99']:>8.3f} {lat['mean']:>8.3f} "
              f"{r['throughput_ips']:>9.1f}")
    for s in result["skipped"]:
        print(f"skipped batch {s['batch']}: {s['reason']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not args.engine.is_file():
            raise ProfilerError(f"engine file not found: {args.engine}")
        result = profile_engine(args.engine, args.batch, args.warmup, args.iters, args.duration, args.seed,
                                args.variant, args.precision, args.dla_core)
    except ProfilerError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    _print_table(result)
    jetson = result["host"].get("jetson")
    if jetson:
        mode = (jetson.get("power_mode") or {}).get("name")
        print(f"power mode: {mode or 'unknown'}; clocks locked: {jetson['locked']}")
        if jetson.get("advice"):
            print(jetson["advice"])
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
