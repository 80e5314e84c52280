"""onnxruntime as a Runner (CPU, CUDA and TensorRT execution providers), the one place ORT sessions are
configured, and where the time goes inside a graph: onnxruntime's profiler summarised into the top op types and
nodes.

Profiling slows a session down (every node is timed and logged), so it always runs in a session of its own after
the timed loop, and its numbers say where time is spent, not how long a call takes.
"""
from __future__ import annotations

import collections
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitdeploy.errors import BackendError, VitDeployError
from vitdeploy.io import atomic_write_bytes
from vitdeploy.runtime.base import Runner
from vitdeploy.runtime.host import physical_cores

# provider argument of OrtRunner -> (backend name, onnxruntime providers in priority order)
PROVIDERS: dict[str, tuple[str, list[str]]] = {
    "cpu": ("ort-cpu", ["CPUExecutionProvider"]),
    "cuda": ("ort-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    "tensorrt": ("ort-trt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
}
BACKEND_TO_PROVIDER = {name: provider for provider, (name, _) in PROVIDERS.items()}


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(f"onnxruntime is not installed here ({e})") from e
    return onnxruntime


def check_provider(provider: str, ort: Any = None) -> list[str]:
    """The providers list for `provider` ('cpu', 'cuda', 'tensorrt'), or one BackendError line when this
    onnxruntime lacks it."""
    ort = ort or import_ort()
    if provider not in PROVIDERS:
        raise BackendError(f"unknown onnxruntime provider {provider!r}; known: {', '.join(PROVIDERS)}")
    backend, providers = PROVIDERS[provider]
    available = ort.get_available_providers()
    if providers[0] not in available:
        raise BackendError(f"backend {backend!r} needs {providers[0]}, which this onnxruntime lacks; "
                           f"available: {', '.join(available)}")
    return providers


def session_options(threads: int, spin: bool = True, profile_prefix: str | None = None) -> Any:
    """The SessionOptions of every ORT session vitdeploy opens: `threads` intra-op threads, sequential execution,
    all graph optimisations, errors-only logging. `spin=False` stops idle intra-op threads from spin-waiting: needed
    when several sessions are timed interleaved on few cores, where one session's spinning threads would steal the
    cores the next one runs on. `profile_prefix` turns on onnxruntime's profiler."""
    ort = import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: keep provider chatter off the user's terminal
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


class OrtRunner(Runner):
    """An onnxruntime session on the CPU, CUDA or TensorRT execution provider.

    `threads` pins intra_op_num_threads (inter_op is 1, sequential execution); without it, intra-op threads are
    pinned to the physical core count (onnxruntime's own default), so the number used is always recorded.
    `profile_dir` turns on onnxruntime's profiler; the JSON lands there on deactivate (`profile_path`).
    `spin=False` stops idle intra-op threads from spin-waiting: needed when several sessions are timed interleaved
    on few cores, where one session's spinning threads would steal the cores the next one runs on.
    """

    def __init__(self, onnx_path: str | Path, provider: str = "cpu", threads: int | None = None,
                 profile_dir: str | None = None, spin: bool = True) -> None:
        super().__init__()
        self.spin = spin
        self._ort = import_ort()
        provider = str(provider).lower()
        self.providers = check_provider(provider, self._ort)
        self.name = PROVIDERS[provider][0]
        self.provider = provider
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise VitDeployError(f"ONNX file not found: {self.onnx_path}")
        if threads is not None and threads < 1:
            raise VitDeployError(f"threads must be >= 1, got {threads}")
        self.threads = int(threads) if threads is not None else physical_cores()
        self.profile_dir = Path(profile_dir) if profile_dir is not None else None
        self.profile_path: Path | None = None
        self.session: Any = None
        self.static_batch: int | None = self._read_static_batch()
        if self.static_batch is not None:
            self.batch_range = (self.static_batch, self.static_batch)
        self._scratch: Path | None = None

    def _read_static_batch(self) -> int | None:
        import onnx
        proto = onnx.load(str(self.onnx_path), load_external_data=False)
        inits = {t.name for t in proto.graph.initializer}
        for v in proto.graph.input:
            if v.name not in inits:
                dims = v.type.tensor_type.shape.dim
                return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None
        return None

    def _session_options(self) -> Any:
        prefix = None
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            self._scratch = Path(tempfile.mkdtemp(prefix=".ort-profile.", dir=self.profile_dir))
            prefix = str(self._scratch / self.name)
        return session_options(self.threads, spin=self.spin, profile_prefix=prefix)

    def _activate(self) -> None:
        try:
            self.session = self._ort.InferenceSession(str(self.onnx_path), sess_options=self._session_options(),
                                                      providers=self.providers)
        except Exception as e:
            self._drop_scratch()
            raise BackendError(f"{self.name}: could not create an onnxruntime session for {self.onnx_path}: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
        used = self.session.get_providers()
        if used[0] != self.providers[0]:  # onnxruntime silently falls back to CPU when a GPU provider fails
            self.session = None
            self._drop_scratch()
            raise BackendError(f"{self.name}: onnxruntime fell back to {used[0]} ({self.providers[0]} failed to load)")
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        self._input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self._output_name = self.session.get_outputs()[0].name

    def _infer(self, x: np.ndarray) -> np.ndarray:
        if self.static_batch is not None and len(x) != self.static_batch:
            raise VitDeployError(f"{self.onnx_path.name} has a fixed batch of {self.static_batch}, got {len(x)}")
        if self._input_dtype is not np.float32:
            x = x.astype(self._input_dtype)
        return self.session.run([self._output_name], {self._input_name: x})[0]

    def _deactivate(self) -> None:
        try:
            if self.profile_dir is not None and self.session is not None:
                raw = Path(self.session.end_profiling())
                target = self.profile_dir / raw.name
                atomic_write_bytes(target, raw.read_bytes())
                self.profile_path = target
        finally:
            self.session = None
            self._drop_scratch()

    def op_profile(self, x: np.ndarray, runs: int, top: int) -> dict[str, Any]:
        return ort_op_profile(self.onnx_path, self.provider, self.threads, x, runs=runs, top=top)

    def _drop_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


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


def _gemm_graph(n: int, dtype: str) -> bytes:
    """A one-node ONNX graph: an n x n input times an n x n weight (MatMul; MatMulInteger u8 x s8 for int8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if dtype == "int8":
        weight = rng.integers(-127, 128, (n, n)).astype(np.int8)
        node, a_type, c_type = helper.make_node("MatMulInteger", ["A", "B"], ["C"]), TensorProto.UINT8, TensorProto.INT32
    else:
        weight = rng.standard_normal((n, n)).astype(np.float16 if dtype == "fp16" else np.float32)
        a_type = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
        node, c_type = helper.make_node("MatMul", ["A", "B"], ["C"]), a_type
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("C", c_type, [n, n])], [numpy_helper.from_array(weight, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def _gemm_input(n: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if dtype == "int8":
        return rng.integers(0, 256, (n, n)).astype(np.uint8)
    return rng.standard_normal((n, n)).astype(np.float16 if dtype == "fp16" else np.float32)


def ort_gemm_peak(threads: int | None, n: int = 1024, reps: int = 10) -> dict[str, Any]:
    """Best GMAC/s of an n x n x n GEMM run by onnxruntime itself on the CPU, with the session options every
    vitdeploy session has: FP32 MatMul and INT8 MatMulInteger (MLAS uses VNNI where the CPU has it). A precision
    this onnxruntime cannot run is None; FP16 is None (onnxruntime's CPU provider computes FP16 graphs in FP32)."""
    ort = import_ort()
    providers = check_provider("cpu", ort)
    threads = int(threads) if threads is not None else physical_cores()
    out: dict[str, Any] = {"gemm": f"onnxruntime MatMul / MatMulInteger {n}x{n}x{n}, best of {reps}",
                           "fp32": None, "int8": None, "fp16": None}
    for dtype in ("fp32", "int8"):
        try:
            session = ort.InferenceSession(_gemm_graph(n, dtype), sess_options=session_options(threads),
                                           providers=providers)
            feed = {"A": _gemm_input(n, dtype)}
            session.run(None, feed)
            best = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                session.run(None, feed)
                best = min(best, time.perf_counter() - t)
            out[dtype] = n ** 3 / best / 1e9
        except Exception:  # an onnxruntime without that kernel: no peak for that precision
            out[dtype] = None
    return out
