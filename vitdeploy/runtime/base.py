"""The runner interface every backend implements: one small contract over PyTorch, onnxruntime and TensorRT
engines, so latency and accuracy code never cares which backend runs the model (construct, activate, infer many
times, deactivate).

Every runner takes float32 NCHW numpy arrays and returns float32 logits as numpy; a runner whose model takes or
gives another dtype (fp16 graphs and engines) casts at its edges.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any

import numpy as np

from vitdeploy.errors import VitDeployError


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


