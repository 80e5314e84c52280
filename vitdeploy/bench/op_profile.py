"""Where the time goes inside an ONNX graph: onnxruntime's profiler, summarised into the top op types and nodes.

Profiling slows a session down (every node is timed and logged), so it always runs in a session of its own after
the timed loop, and its numbers say where time is spent, not how long a call takes.
"""
from __future__ import annotations

import collections
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.errors import VitDeployError

_KERNEL_SUFFIX = "_kernel_time"


def _runs(events: list[dict]) -> list[tuple[int, int]]:
    """(start, end) in µs of every `model_run` (one InferenceSession.run call), in time order."""
    spans = [(int(e["ts"]), int(e["ts"]) + int(e["dur"])) for e in events
             if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return sorted(spans)


def summarize_ort_profile(events: list[dict], skip_runs: int = 0, top: int = 10) -> dict[str, Any]:
    """Aggregate onnxruntime profile events (the JSON list `end_profiling` writes) into per-run milliseconds.

    The first `skip_runs` runs are left out (first calls allocate and are slow). Returns the number of runs kept,
    the mean time per run spent in kernels, and the `top` op types and nodes by time, each with its share.
    """
    runs = _runs(events)[skip_runs:]
    if not runs:
        raise VitDeployError(f"the onnxruntime profile has no runs after skipping {skip_runs}")
    kept = np.array(runs)
    by_type: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    node_type: dict[str, str] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX):
            continue
        ts = int(e["ts"])
        i = np.searchsorted(kept[:, 0], ts, side="right") - 1
        if i < 0 or ts > kept[i, 1]:
            continue  # a node of a skipped run
        node, op = name[: -len(_KERNEL_SUFFIX)], e.get("args", {}).get("op_name", "?")
        dur = int(e["dur"])
        by_type[op] += dur
        by_node[node] += dur
        calls[op] += 1
        node_type[node] = op
    n = len(runs)
    total = sum(by_type.values())
    share = (lambda us: 100.0 * us / total if total else 0.0)
    return {
        "runs": n,
        "kernel_ms_per_run": total / n / 1000.0,
        "by_op_type": [{"op_type": op, "ms": us / n / 1000.0, "percent": share(us), "nodes_per_run": calls[op] / n}
                       for op, us in by_type.most_common(top)],
        "by_node": [{"node": node, "op_type": node_type[node], "ms": us / n / 1000.0, "percent": share(us)}
                    for node, us in by_node.most_common(top)],
    }


def ort_op_profile(onnx_path: str | Path, provider: str, threads: int | None, x: np.ndarray, runs: int = 20,
                   warmup: int = 3, top: int = 10) -> dict[str, Any]:
    """Profile `runs` calls on `x` in a fresh session with onnxruntime's profiler on, after `warmup` calls."""
    from vitdeploy.bench.runners import OrtRunner

    if runs < 1:
        raise VitDeployError(f"op profile runs must be >= 1, got {runs}")
    scratch = Path(tempfile.mkdtemp(prefix="vitdeploy-op-profile."))
    try:
        runner = OrtRunner(onnx_path, provider=provider, threads=threads, profile_dir=str(scratch))
        with runner:
            for _ in range(warmup + runs):
                runner.infer(x)
        events = json.loads(Path(runner.profile_path).read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"batch": int(len(x)), "warmup": warmup, **summarize_ort_profile(events, skip_runs=warmup, top=top)}
