"""The backend registry: names, parsing, availability checks and runner creation. Each backend lives in a module of
its own (`torch`, `onnxrt`, `trt`), imported only when a runner for it is made or checked."""
from __future__ import annotations

from pathlib import Path

from vitdeploy.errors import BackendError, VitDeployError
from vitdeploy.runtime.base import Runner

BACKENDS: dict[str, str] = {
    "torch-cpu": "PyTorch eager on CPU, fp32",
    "torch-cuda": "PyTorch eager on a CUDA GPU with fp16 autocast",
    "ort-cpu": "onnxruntime CPUExecutionProvider, fp32",
    "ort-cuda": "onnxruntime CUDAExecutionProvider (needs onnxruntime-gpu and a GPU)",
    "ort-trt": "onnxruntime TensorrtExecutionProvider (needs onnxruntime-gpu, TensorRT and a GPU)",
    "trt": "TensorRT engines (.plan/.engine) through the tensorrt package (needs TensorRT and a GPU)",
}


def parse_backends(spec: str) -> list[str]:
    """"ort-cpu, torch-cpu" -> ["ort-cpu", "torch-cpu"] (order kept, duplicates dropped); unknown -> BackendError."""
    names = list(dict.fromkeys(s.strip().lower() for s in str(spec).split(",") if s.strip()))
    if not names:
        raise BackendError(f"no backend given; known: {', '.join(BACKENDS)}")
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise BackendError(f"unknown backend {', '.join(map(repr, unknown))}; known: {', '.join(BACKENDS)}")
    return names


def check_backend_available(name: str) -> None:
    """Raise BackendError (one line) when `name` cannot run here: unknown, library, provider or GPU missing."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name == "torch-cpu":
        return
    if name == "trt":
        from vitdeploy.runtime.trt import import_tensorrt

        import_tensorrt()
    if name in ("torch-cuda", "trt"):
        from vitdeploy.runtime.torch import check_cuda

        check_cuda(name)
        return
    from vitdeploy.runtime.onnxrt import BACKEND_TO_PROVIDER, check_provider

    check_provider(BACKEND_TO_PROVIDER[name])


def create_runner(backend: str, model=None, onnx_path: str | Path | None = None, threads: int | None = None,
                  engine_path: str | Path | None = None, spin: bool = True) -> Runner:
    """A runner for a backend name from BACKENDS: torch-* need `model`, ort-* need `onnx_path`, trt `engine_path`.
    `spin=False` keeps idle ORT threads from spin-waiting (for sessions timed interleaved)."""
    check_backend_available(backend)
    if backend == "trt":
        if engine_path is None:
            raise VitDeployError("backend 'trt' runs TensorRT engines (.plan/.engine); build one from the ONNX graph first")
        from vitdeploy.runtime.trt import TrtRunner

        return TrtRunner(engine_path)
    if backend.startswith("torch-"):
        if model is None:
            raise VitDeployError(f"backend {backend!r} needs a PyTorch model, not an ONNX file")
        from vitdeploy.runtime.torch import TorchRunner

        return TorchRunner(model, device=backend.split("-", 1)[1], threads=threads)
    if onnx_path is None:
        raise VitDeployError(f"backend {backend!r} needs an ONNX file; export the model first")
    from vitdeploy.runtime.onnxrt import BACKEND_TO_PROVIDER, OrtRunner

    return OrtRunner(onnx_path, provider=BACKEND_TO_PROVIDER[backend], threads=threads, spin=spin)


def gemm_peak(backend: str, threads: int | None = None) -> dict[str, float | str | None]:
    """The peak of `backend` on this host, measured now: GMAC/s of a large square GEMM in FP32, plus INT8 where the
    backend has an INT8 GEMM (onnxruntime's MatMulInteger on CPU) and FP16 on a GPU. The ceiling an artifact's
    achieved MAC rate is held against.

    On a GPU (torch-cuda, ort-cuda, ort-trt, trt) the peak is PyTorch's FP32 and FP16 GEMM timed with CUDA events:
    the GPU's ceiling, whichever library drives it.
    """
    check_backend_available(backend)
    if backend == "ort-cpu":
        from vitdeploy.runtime.onnxrt import ort_gemm_peak

        return ort_gemm_peak(threads)
    from vitdeploy.runtime.torch import torch_gemm_peak

    return torch_gemm_peak("cpu" if backend == "torch-cpu" else "cuda", threads)
