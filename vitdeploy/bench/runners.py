"""Runners: one small interface over PyTorch, onnxruntime and TensorRT engines, so latency and accuracy code never
cares which backend runs the model (the Polygraphy pattern: construct, activate, infer many times, deactivate).

Every runner takes float32 NCHW numpy arrays and returns float32 logits as numpy; a runner whose model takes or
gives another dtype (fp16 graphs and engines) casts at its edges.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from vitdeploy.bench.host import physical_cores
from vitdeploy.errors import BackendError, VitDeployError
from vitdeploy.io import atomic_write_bytes

BACKENDS: dict[str, str] = {
    "torch-cpu": "PyTorch eager on CPU, fp32",
    "torch-cuda": "PyTorch eager on a CUDA GPU with fp16 autocast",
    "ort-cpu": "onnxruntime CPUExecutionProvider, fp32",
    "ort-cuda": "onnxruntime CUDAExecutionProvider (needs onnxruntime-gpu and a GPU)",
    "ort-trt": "onnxruntime TensorrtExecutionProvider (needs onnxruntime-gpu, TensorRT and a GPU)",
    "trt": "TensorRT engines (.plan/.engine) through the tensorrt package (needs TensorRT and a GPU)",
}

# provider argument of OrtRunner -> (backend name, onnxruntime providers in priority order)
_ORT_PROVIDERS: dict[str, tuple[str, list[str]]] = {
    "cpu": ("ort-cpu", ["CPUExecutionProvider"]),
    "cuda": ("ort-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    "tensorrt": ("ort-trt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
}
_BACKEND_TO_PROVIDER = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}


# ------------------------------------------------------------------------------------------- registry
def parse_backends(spec: str) -> list[str]:
    """"ort-cpu, torch-cpu" -> ["ort-cpu", "torch-cpu"] (order kept, duplicates dropped); unknown -> BackendError."""
    names = list(dict.fromkeys(s.strip().lower() for s in str(spec).split(",") if s.strip()))
    if not names:
        raise BackendError(f"no backend given; known: {', '.join(BACKENDS)}")
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise BackendError(f"unknown backend {', '.join(map(repr, unknown))}; known: {', '.join(BACKENDS)}")
    return names


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(f"onnxruntime is not installed here ({e})") from e
    return onnxruntime


def check_backend_available(name: str) -> None:
    """Raise BackendError (one line) when `name` cannot run here: unknown, library, provider or GPU missing."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name == "torch-cpu":
        return
    if name == "trt":
        from vitdeploy.bench.trt import import_tensorrt

        import_tensorrt()
    if name in ("torch-cuda", "trt"):
        if not torch.cuda.is_available():
            raise BackendError(f"backend {name!r} needs a CUDA GPU, but torch.cuda.is_available() is False here")
        return
    _check_provider(_import_ort(), _BACKEND_TO_PROVIDER[name])


def _check_provider(ort: Any, provider: str) -> list[str]:
    if provider not in _ORT_PROVIDERS:
        raise BackendError(f"unknown onnxruntime provider {provider!r}; known: {', '.join(_ORT_PROVIDERS)}")
    backend, providers = _ORT_PROVIDERS[provider]
    available = ort.get_available_providers()
    if providers[0] not in available:
        raise BackendError(f"backend {backend!r} needs {providers[0]}, which this onnxruntime lacks; "
                           f"available: {', '.join(available)}")
    return providers


def create_runner(backend: str, model: torch.nn.Module | None = None, onnx_path: str | Path | None = None,
                  threads: int | None = None, engine_path: str | Path | None = None) -> "Runner":
    """A runner for a backend name from BACKENDS: torch-* need `model`, ort-* need `onnx_path`, trt `engine_path`."""
    check_backend_available(backend)
    if backend == "trt":
        if engine_path is None:
            raise VitDeployError("backend 'trt' runs TensorRT engines (.plan/.engine); build one from the ONNX graph first")
        from vitdeploy.bench.trt import TrtRunner

        return TrtRunner(engine_path)
    if backend.startswith("torch-"):
        if model is None:
            raise VitDeployError(f"backend {backend!r} needs a PyTorch model, not an ONNX file")
        return TorchRunner(model, device=backend.split("-", 1)[1], threads=threads)
    if onnx_path is None:
        raise VitDeployError(f"backend {backend!r} needs an ONNX file; export the model first")
    return OrtRunner(onnx_path, provider=_BACKEND_TO_PROVIDER[backend], threads=threads)


# ----------------------------------------------------------------------------------------------- runners
class Runner:
    """Base runner. Use as a context manager: `with runner: runner.infer(x)`."""

    name: str = "runner"
    threads: int | None = None
    # smallest and largest batch the model accepts (None: no upper bound); known once the runner is built
    batch_range: tuple[int, int | None] = (1, None)

    def __init__(self) -> None:
        self.active = False

    def supports_batch(self, batch: int) -> bool:
        """Whether `batch` lies in the model's batch range (a static ONNX batch, an engine's optimisation profile)."""
        low, high = self.batch_range
        return low <= batch and (high is None or batch <= high)

    def op_profile(self, x: np.ndarray, runs: int, top: int) -> dict[str, Any] | None:
        """Time per op type and per node over `runs` calls on `x`, in a separate profiling session so timed loops
        are never disturbed; None for backends without an op-level profiler."""
        return None

    def activate(self) -> None:
        """Acquire resources (sessions, device copies, thread settings); idempotent."""
        if not self.active:
            self._activate()
            self.active = True

    def deactivate(self) -> None:
        """Release what activate acquired and restore global settings; idempotent."""
        if self.active:
            try:
                self._deactivate()
            finally:
                self.active = False

    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW batch in, float32 logits (N, classes) out."""
        if not self.active:
            raise VitDeployError(f"runner {self.name!r} is not active; use it as a context manager or call activate()")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise VitDeployError(f"runner {self.name!r} expects an NCHW batch, got shape {x.shape}")
        return np.asarray(self._infer(x), dtype=np.float32)

    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, threads={self.threads}, active={self.active})"


class TorchRunner(Runner):
    """PyTorch eager. CPU runs fp32 with pinned intra-op threads; CUDA runs a private copy under fp16 autocast.

    The caller's module is never changed for good: its train/eval flags and torch's thread count are restored
    on deactivate, and the CUDA path works on a copy.
    """

    def __init__(self, model: torch.nn.Module, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        device = str(device).lower()
        if device not in ("cpu", "cuda"):
            raise BackendError(f"unknown torch device {device!r}; use 'cpu' or 'cuda'")
        if device == "cuda":
            check_backend_available("torch-cuda")
        if threads is not None and threads < 1:
            raise VitDeployError(f"threads must be >= 1, got {threads}")
        self.name = f"torch-{device}"
        self.device = device
        self.requested_threads = threads
        self.threads = threads if threads is not None else torch.get_num_threads()
        self._model = model
        self._run_model: torch.nn.Module | None = None
        self._saved_threads: int | None = None
        self._saved_flags: list[tuple[torch.nn.Module, bool]] = []

    def _activate(self) -> None:
        self._saved_threads = torch.get_num_threads()
        if self.requested_threads is not None:
            torch.set_num_threads(self.requested_threads)
        self.threads = torch.get_num_threads()
        if self.device == "cuda":
            import copy
            self._run_model = copy.deepcopy(self._model).to("cuda").eval()
        else:
            self._saved_flags = [(m, m.training) for m in self._model.modules()]
            self._run_model = self._model.eval()

    def _infer(self, x: np.ndarray) -> np.ndarray:
        assert self._run_model is not None
        t = torch.from_numpy(x)
        with torch.inference_mode():
            if self.device == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self._run_model(t.to("cuda", non_blocking=False))
            else:
                out = self._run_model(t)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy()  # .cpu() synchronises, so wall-clock timing is honest

    def _deactivate(self) -> None:
        for m, flag in self._saved_flags:
            m.training = flag
        self._saved_flags = []
        self._run_model = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)


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
        self._ort = _import_ort()
        provider = str(provider).lower()
        self.providers = _check_provider(self._ort, provider)
        self.name = _ORT_PROVIDERS[provider][0]
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
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: keep provider chatter off the user's terminal
        if not self.spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            self._scratch = Path(tempfile.mkdtemp(prefix=".ort-profile.", dir=self.profile_dir))
            so.enable_profiling = True
            so.profile_file_prefix = str(self._scratch / self.name)
        return so

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
        from vitdeploy.bench.op_profile import ort_op_profile

        return ort_op_profile(self.onnx_path, self.provider, self.threads, x, runs=runs, top=top)

    def _drop_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
