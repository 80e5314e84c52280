"""Supervised training and fine-tuning: AdamW, linear warm-up then cosine decay (per step), label smoothing,
optional logit distillation from a teacher, a progress bar with loss and accuracy."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitdeploy import distributed
from vitdeploy.compression.checkpoint import PhaseCheckpoint
from vitdeploy.compression.gates import GateSet
from vitdeploy.compression.recipe import DistillCfg, SparsityCfg, TrainCfg
from vitdeploy.progress import make_progress


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T² so its gradient matches the CE term's size."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="batchmean") * t * t


@torch.no_grad()
def evaluate_top1(model: nn.Module, loader: DataLoader, max_batches: Optional[int] = None) -> float:
    """Top-1 over the loader (under torchrun: each rank's share, counts summed across ranks)."""
    was = model.training
    model.eval()
    dev = _device_of(model)
    correct = total = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        correct += (model(x.to(dev)).argmax(-1).cpu() == y).sum().item()
        total += y.numel()
    model.train(was)
    correct, total = distributed.sum_across([correct, total])
    return correct / max(1, total)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _param_groups(model: nn.Module, cfg: TrainCfg, gates: Optional[GateSet]) -> list[dict]:
    """AdamW groups: weights with decay, biases and norms without, the importance scores at their own rate."""
    gate_ids = {id(p) for p in gates.parameters()} if gates is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if gates is not None:
        score_lr = cfg.score_lr if isinstance(cfg, SparsityCfg) and cfg.score_lr is not None else cfg.lr
        groups.append({"params": list(gates.parameters()), "weight_decay": 0.0, "lr": score_lr})
    return groups


@dataclass
class _Phase:
    """What a training phase carries from step to step, and saves to (and resumes from) its checkpoint."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    shuffle: Optional[torch.Generator]  # the loader's shuffling generator
    checkpoint: Optional[PhaseCheckpoint]
    history: list = field(default_factory=list)
    val_top1: Optional[float] = None
    epoch: int = 0
    step: int = 0
    sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # task loss · n, L1 term · n, correct, seen
    rng: Optional[torch.Tensor] = None  # the RNG state to restore at the first resumed step

    def resume(self) -> bool:
        """Load the checkpoint if there is one; True when it says the phase already finished."""
        state = self.checkpoint.load() if self.checkpoint is not None else None
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.history, self.val_top1 = state["history"], state["val_top1"]
        self.epoch, self.step, self.sums = state["epoch"], state["step"], state["sums"]
        if self.shuffle is not None:
            self.shuffle.set_state(state["shuffle"])
        self.rng = state["rng"]
        if state["done"]:
            torch.set_rng_state(self.rng)
        return bool(state["done"])

    def save(self, epoch: int, step: int, epoch_shuffle: Optional[torch.Tensor], done: bool) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.save({
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "history": self.history, "val_top1": self.val_top1, "epoch": epoch, "step": step, "sums": list(self.sums),
            "shuffle": epoch_shuffle if epoch_shuffle is not None else torch.zeros(0, dtype=torch.uint8),
            "rng": torch.get_rng_state(), "done": done})

    def shuffle_state(self) -> Optional[torch.Tensor]:
        return self.shuffle.get_state() if self.shuffle is not None else None


def _loss(trained: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainCfg, teacher: Optional[nn.Module],
          kd: Optional[DistillCfg], gates: Optional[GateSet], sums: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's objective (cross-entropy, distilled from `teacher` with `kd`, plus λ·Σ|a| with `gates`) and the
    logits; the running sums get the task loss, the L1 term, the correct count and the batch size."""
    logits = trained(x)  # B, classes
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if kd is not None:
        with torch.no_grad():
            t_logits = teacher(x)
        loss = (1 - kd.alpha) * loss + kd.alpha * distill_loss(logits, t_logits, kd.temperature)
    task_loss = loss.item()
    if gates is not None:
        lam = cfg.l1 if isinstance(cfg, SparsityCfg) else 0.0
        l1 = gates.l1()
        loss = loss + lam * l1
        sums[1] += lam * l1.item() * y.numel()
    sums[0] += task_loss * y.numel()
    sums[2] += (logits.argmax(-1) == y).sum().item()
    sums[3] += y.numel()
    return loss, logits


def _epoch_record(run: _Phase, epoch: int, gates: Optional[GateSet]) -> dict:
    loss_sum, l1_sum, correct, seen = distributed.sum_across(run.sums)
    record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen, "val_top1": run.val_top1}
    if gates is not None:
        below = gates.count_below(1e-2, 1e-1)
        record |= {"l1_term": l1_sum / seen, "scores_below_1e-2": below[0], "scores_below_1e-1": below[1]}
    return record


def _epoch_steps(run: _Phase, trained: nn.Module, loader: DataLoader, epoch: int, cfg: TrainCfg,
                 teacher: Optional[nn.Module], kd: Optional[DistillCfg], gates: Optional[GateSet],
                 dev: torch.device) -> Iterator[int]:
    """The optimiser steps of one epoch, yielding after each. A resumed epoch replays the same order and skips the
    steps already taken; mid-epoch checkpoints every `checkpoint.every` steps."""
    epoch_shuffle = run.shuffle_state()
    if not run.step:
        run.sums = [0.0, 0.0, 0.0, 0.0]
    batches = iter(loader)
    for _ in range(run.step):
        next(batches)
    if run.rng is not None:  # dropout etc. continue where the checkpoint left them
        torch.set_rng_state(run.rng)
        run.rng = None
    every = run.checkpoint.every if run.checkpoint is not None else 0
    for step, (x, y) in enumerate(batches, start=run.step):
        loss, _ = _loss(trained, x.to(dev), y.to(dev), cfg, teacher, kd, gates, run.sums)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.sched.step()
        yield step
        if every and (step + 1) % every == 0 and step + 1 < len(loader):
            run.save(epoch, step + 1, epoch_shuffle, done=False)
    run.step = 0


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Optional[DataLoader],
    cfg: TrainCfg,
    teacher: Optional[nn.Module] = None,
    distill: Optional[DistillCfg] = None,
    desc: str = "train",
    gates: Optional[GateSet] = None,
    checkpoint: Optional[PhaseCheckpoint] = None,
) -> dict:
    """Train in place. With `gates` (and a SparsityCfg), the objective adds λ·Σ|a| over the scores, which train
    with their own learning rate and no weight decay. With `checkpoint`, the phase is saved at every epoch end (and
    every `checkpoint.every` steps) and resumed from what is saved. Under torchrun the model trains as DDP.
    Returns {"epochs": [{"epoch", "loss", "train_acc", "val_top1", ...}], "val_top1": last}."""
    if cfg.epochs == 0:
        return {"epochs": [], "val_top1": None}
    opt = torch.optim.AdamW(_param_groups(model, cfg, gates), lr=cfg.lr)
    steps_per_epoch = len(train_loader)
    sched = cosine_schedule(opt, cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
    kd = distill if teacher is not None and distill is not None and distill.enabled else None
    if kd is not None:
        teacher.eval()
    dev = _device_of(model)
    run = _Phase(model, opt, sched, train_loader.generator, checkpoint)
    if run.resume():
        model.eval()
        return {"epochs": run.history, "val_top1": run.val_top1, "resumed": "done"}
    trained = distributed.wrap(model)
    with make_progress() as progress:
        task = progress.add_task(desc, total=cfg.epochs * steps_per_epoch,
                                 completed=run.epoch * steps_per_epoch + run.step, info="")
        for epoch in range(run.epoch, cfg.epochs):
            model.train()
            for _ in _epoch_steps(run, trained, train_loader, epoch, cfg, teacher, kd, gates, dev):
                progress.update(task, advance=1, info=_status(epoch, cfg.epochs, run.sums, run.val_top1, gates))
            run.val_top1 = evaluate_top1(model, val_loader) if val_loader is not None else None
            run.history.append(_epoch_record(run, epoch, gates))
            progress.update(task, info=_status(epoch, cfg.epochs, run.sums, run.val_top1, gates))
            run.save(epoch + 1, 0, run.shuffle_state(), done=epoch + 1 == cfg.epochs)
    model.eval()
    return {"epochs": run.history, "val_top1": run.val_top1}


def _status(epoch: int, epochs: int, sums: list, val: Optional[float], gates: Optional[GateSet]) -> str:
    """This rank's running figures for the progress bar."""
    seen = max(1.0, sums[3])
    loss, l1, acc = sums[0] / seen, sums[1] / seen, sums[2] / seen
    text = f"epoch {epoch + 1}/{epochs} {'task ' if gates is not None else ''}loss {loss:.3f} acc {acc:.3f}"
    if gates is not None:
        below = gates.count_below(1e-2, 1e-1)
        text += f" L1 {l1:.3f} scores<1e-2 {below[0]} <1e-1 {below[1]}/{gates.numel()}"
    return text + (f" val {val:.3f}" if val is not None else "")
