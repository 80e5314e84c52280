"""The measuring side of a latency budget (`compression/budget.py` plans): the latency table, built here
(`runtime/latency_table.py`) or read from a file, and whole models timed against each other interleaved on the
planning backend, with paired ratios. The API hands an `Oracle` to the compress stage."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from vitdeploy.bench.latency import ProfileItem, profile_artifacts
from vitdeploy.errors import VitDeployError
from vitdeploy.runtime.host import physical_cores
from vitdeploy.runtime.latency_table import TABLE_BACKENDS, LatencyTable, build_table, load_table
from vitdeploy.runtime.registry import create_runner
from vitdeploy.runtime.trace import trace_to_onnx


class Oracle:
    """The measuring side of a latency budget: builds (or loads) the table and times whole models interleaved on
    the planning backend (see budget.LatencyOracle)."""

    def __init__(self, backend: str, batch: int, threads: Optional[int], input_size: tuple[int, int, int],
                 table_path: Optional[str] = None, seconds: float = 12.0, rounds: int = 20, name: str = "",
                 alignment: int = 8, min_keep: float = 0.1) -> None:
        self.backend, self.batch, self.input_size = backend, int(batch), tuple(input_size)
        self.threads = threads
        self.table_path, self.seconds, self.rounds, self.name = table_path, seconds, rounds, name
        self.alignment, self.min_keep = alignment, min_keep

    def table(self, model: nn.Module) -> LatencyTable:
        if self.table_path is not None:
            t = load_table(self.table_path)
            if t.backend != self.backend or t.batch != self.batch:
                raise VitDeployError(f"the latency table {self.table_path} was measured on {t.backend} at batch "
                                     f"{t.batch}, the budget plans for {self.backend} at batch {self.batch}")
            t.source = f"{self.table_path} ({t.source})"
            return t
        return build_table(model, self.backend, self.batch, self.threads, self.input_size, self.alignment,
                           self.min_keep, name=self.name)

    def measure(self, models: dict[str, nn.Module]) -> dict[str, dict]:
        """p50 of each model and its paired speedup over the first, timed interleaved in one run."""
        if self.backend not in TABLE_BACKENDS:
            raise VitDeployError(f"pruned models cannot be timed on {self.backend} here: set prune.budget.verify=false "
                                 "and check the engine on the device")
        with tempfile.TemporaryDirectory(prefix="vitdeploy-verify-") as tmp:
            items = []
            for label, m in models.items():
                items.append(ProfileItem(label, self._runner_factory(m, Path(tmp) / f"{label}.onnx")))
            out = profile_artifacts(items, [self.batch], warmup=5, duration=self.seconds * len(models),
                                    input_size=self.input_size, threads=self.threads, rounds=self.rounds,
                                    roofline=False, show_progress=True)
        rows = {r["artifact"]: r for r in out["results"]}
        result = {}
        for label in models:
            r = rows[label]
            s = r.get("speedup") or {}
            result[label] = {"ms": r["latency_ms"]["p50"], "speedup": s.get("speedup", 1.0), "ci95": s.get("ci95")}
        return result

    def _runner_factory(self, model: nn.Module, path: Path):
        if self.backend == "ort-cpu":
            m = copy.deepcopy(model).cpu().float().eval()
            trace_to_onnx(m, torch.randn(2, *self.input_size), path, 17,
                          {"input": {0: "batch"}, "logits": {0: "batch"}})
            return lambda: create_runner("ort-cpu", onnx_path=path, threads=self.threads or physical_cores(),
                                         spin=False)
        return lambda: create_runner(self.backend, model=model, threads=self.threads)
