"""Checkpoints for resuming `train` and `compress` after a crash or a kill.

A run keeps its checkpoints in `OUT.ckpt/` beside the output: `run.json` (what the run is: command, recipe, model,
data, seed) and one `<phase>.pt` per training phase (train; sparsity; fine-tune; MCF recoveries). Each is written
to a temporary name and renamed, so a kill leaves the previous checkpoint whole. They are saved at epoch boundaries
and, with `checkpoint_every`, every N optimiser steps. A checkpoint holds the model and optimiser state, the
schedule, the history so far, the torch RNG and the loader's shuffling generator: a resumed run on CPU replays the
same batches and arrives at the same weights as an uninterrupted one. Work between phases (planning, slicing,
factoring) is deterministic and is simply redone. The folder is removed once the output is written.
Loading uses `torch.load(weights_only=True)`: a checkpoint can hold tensors and plain values, never code.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from vitdeploy import distributed
from vitdeploy.errors import CheckpointError, OutputError
from vitdeploy.io import atomic_file, atomic_write_json, read_json, write_failure
from vitdeploy.models.modeldir import json_ready
from vitdeploy.progress import console


def checkpoint_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.ckpt"


class PhaseCheckpoint:
    """The latest checkpoint of one training phase."""

    def __init__(self, run: "RunCheckpoints", name: str) -> None:
        self.run, self.every = run, run.every
        self.path = run.root / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.pt"

    def load(self) -> Optional[dict]:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a torch file, or holding more than tensors and plain values
            raise CheckpointError(f"checkpoint '{self.path}' cannot be read ({type(e).__name__}); remove it to restart "
                                  "that phase") from None
        if not isinstance(state, dict) or state.get("format") != 1:
            raise CheckpointError(f"checkpoint '{self.path}' is not a vitdeploy training checkpoint")
        return state

    def save(self, state: dict) -> None:
        if distributed.is_main():
            try:
                self.run.start()
                with atomic_file(self.path) as tmp:
                    torch.save({"format": 1} | state, tmp)
            except (OSError, RuntimeError, OutputError) as e:
                self.run.drop_if_empty()  # a first checkpoint that could not be written leaves no folder behind
                raise self._write_error(e) from None
        distributed.barrier()

    def _write_error(self, e: Exception) -> Exception:
        """torch reports a failed write (disk full, file too large, read-only) as a RuntimeError without an errno."""
        if isinstance(e, OutputError):
            return e
        err = write_failure(e, self.path) if isinstance(e, OSError) else None
        if err is not None:
            return err
        if isinstance(e, RuntimeError):
            return OutputError(f"cannot write checkpoint '{self.path}' (is the disk full or read-only? "
                               f"{' '.join(str(e).split())[:120]})")
        return e


class RunCheckpoints:
    """The checkpoints of one run. Without `resume`, existing checkpoints for the same output are an error (they
    may hold days of work); with it, they must have been written by the same command, recipe, model, data and
    seed. The folder is created at the first save, so a run that fails early leaves nothing behind."""

    def __init__(self, out: Path, fingerprint: dict, resume: bool, every: int = 0) -> None:
        self.root, self.every = checkpoint_dir(out), every
        self.fingerprint = json_ready(fingerprint)
        meta = self.root / "run.json"
        if not meta.exists():
            if resume and distributed.is_main():
                console.print(f"--resume: no checkpoints in {self.root}; starting from the beginning")
            return
        if not resume:
            raise CheckpointError(f"'{self.root}' holds checkpoints of an earlier run: pass --resume to continue it, "
                                  "or remove the folder to start over")
        old = read_json(meta)
        if not isinstance(old, dict) or old.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"--resume: the checkpoints in '{self.root}' belong to a different run "
                                  f"({_first_difference(old, self.fingerprint)}); remove them or run without --resume")
        if distributed.is_main():
            console.print(f"resuming from the checkpoints in {self.root}")

    def start(self) -> None:
        meta = self.root / "run.json"
        if not meta.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta, {"fingerprint": self.fingerprint})

    def drop_if_empty(self) -> None:
        """Remove the folder when it holds no phase checkpoint yet (only run.json, or nothing)."""
        if self.root.is_dir() and not any(p.suffix == ".pt" for p in self.root.iterdir()):
            shutil.rmtree(self.root, ignore_errors=True)

    def phase(self, name: str) -> PhaseCheckpoint:
        return PhaseCheckpoint(self, name)

    def finish(self) -> None:
        """The output is written: the checkpoints are no longer needed."""
        distributed.barrier()
        if distributed.is_main():
            shutil.rmtree(self.root, ignore_errors=True)


def _first_difference(old: Any, new: dict) -> str:
    old = (old or {}).get("fingerprint", {}) if isinstance(old, dict) else {}
    for key in new:
        if old.get(key) != new[key]:
            return f"{key} differs"
    return "run.json is unreadable"
