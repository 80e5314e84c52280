"""PyTorch eager as a Runner: CPU fp32 with pinned intra-op threads, or a CUDA copy under fp16 autocast."""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from vitdeploy.errors import BackendError, VitDeployError
from vitdeploy.runtime.base import Runner


def check_cuda(backend: str) -> None:
    """One BackendError line when `backend` needs a CUDA GPU that torch cannot see."""
    if not torch.cuda.is_available():
        raise BackendError(f"backend {backend!r} needs a CUDA GPU, but torch.cuda.is_available() is False here")


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
            check_cuda("torch-cuda")
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


def torch_gemm_peak(device: str, threads: int | None = None, n: int = 1024, reps: int = 10) -> dict:
    """Best GMAC/s of an n x n x n matmul in PyTorch: FP32 on the CPU (pinned threads, restored after); FP32 and
    FP16 on CUDA, timed with CUDA events (the GPU's own clock, not the host's)."""
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        out: dict = {"gemm": f"torch.matmul {n}x{n}x{n}, best of {reps}", "fp32": _best_gemm(device, torch.float32, n, reps),
                     "int8": None, "fp16": None}
        if device == "cuda":
            out["fp16"] = _best_gemm(device, torch.float16, n * 4, reps)
            out["gemm"] += f"; fp16 {4 * n}^3"
    finally:
        torch.set_num_threads(saved)
    return out


def _best_gemm(device: str, dtype: torch.dtype, n: int, reps: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # first call: allocation and kernel selection
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000.0
        else:
            t = time.perf_counter()
            a @ b
            seconds = time.perf_counter() - t
        best = min(best, seconds)
    return n ** 3 / best / 1e9
