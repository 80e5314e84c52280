"""Describe the machine a measurement ran on, so latency numbers are never reported without their context."""
from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import torch

from vitdeploy.provenance import library_versions


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and val.strip():
                    return val.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def logical_cores() -> int:
    """Logical CPUs this process may run on (respects affinity / container cpusets where visible)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores usable here (onnxruntime's default intra-op thread count), at least 1."""
    cores: set[tuple[str, str]] = set()
    phys = core = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in [*f, "\n"]:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = val.strip()
                elif key == "core id":
                    core = val.strip()
                elif not key:  # blank line ends one processor's block
                    if phys is not None and core is not None:
                        cores.add((phys, core))
                    phys = core = None
    except OSError:
        pass
    logical = logical_cores()
    return max(1, min(len(cores), logical) if cores else logical)


def _nvidia_driver() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            for tok in f.readline().split():
                if tok[:1].isdigit() and "." in tok:
                    return tok
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def gpu_info() -> dict[str, Any] | None:
    """Name, memory, compute capability and driver of GPU 0, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "driver": _nvidia_driver(),
        "cuda": torch.version.cuda,
    }


_CLOCK_FIELDS = ("clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "temperature.gpu", "power.draw",
                 "clocks_throttle_reasons.active")


def gpu_clocks() -> dict[str, Any] | None:
    """GPU 0's current and maximum SM and memory clocks (MHz), temperature, power draw and active throttle reasons,
    from nvidia-smi; None without an NVIDIA GPU. A GPU that throttles during a run shows it here."""
    if not torch.cuda.is_available():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--id=0", f"--query-gpu={','.join(_CLOCK_FIELDS)}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=True)
        values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    return {k.replace("clocks_throttle_reasons.active", "throttle_reasons").replace(".", "_"): v
            for k, v in zip(_CLOCK_FIELDS, values)}


def host_info(threads: int | None = None) -> dict[str, Any]:
    """CPU, cores, threads used, GPU and library versions of this machine."""
    return {
        "cpu": cpu_model(),
        "logical_cores": logical_cores(),
        "physical_cores": physical_cores(),
        "threads": int(threads) if threads is not None else torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "gpu": gpu_info(),
        "versions": library_versions(),
    }
