"""Supervised training and fine-tuning: AdamW, linear warm-up then cosine decay (per step), label smoothing,
optional logit distillation from a teacher, a progress bar with loss and accuracy."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitdeploy import distributed
from vitdeploy.compress.checkpoint import PhaseCheckpoint
from vitdeploy.compress.gates import GateSet
from vitdeploy.compress.recipe import DistillCfg, SparsityCfg, TrainCfg
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
    history: list[dict] = []
    if cfg.epochs == 0:
        return {"epochs": history, "val_top1": None}
    gate_ids = {id(p) for p in gates.parameters()} if gates is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    lam = cfg.l1 if isinstance(cfg, SparsityCfg) else 0.0
    if gates is not None:
        score_lr = cfg.score_lr if isinstance(cfg, SparsityCfg) and cfg.score_lr is not None else cfg.lr
        groups.append({"params": list(gates.parameters()), "weight_decay": 0.0, "lr": score_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    steps_per_epoch = len(train_loader)
    sched = cosine_schedule(opt, cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
    use_kd = teacher is not None and distill is not None and distill.enabled
    if use_kd:
        teacher.eval()
    dev = _device_of(model)
    shuffle = train_loader.generator  # the loader's shuffling generator: saved and restored with the checkpoints

    start_epoch, skip, sums, val_top1 = 0, 0, [0.0, 0.0, 0.0, 0.0], None
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, val_top1 = state["history"], state["val_top1"]
        start_epoch, skip, sums = state["epoch"], state["step"], state["sums"]
        if shuffle is not None:
            shuffle.set_state(state["shuffle"])
        if state["done"]:
            torch.set_rng_state(state["rng"])
            model.eval()
            return {"epochs": history, "val_top1": val_top1, "resumed": "done"}

    def save(epoch: int, step: int, epoch_shuffle: Optional[torch.Tensor], done: bool) -> None:
        checkpoint.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "history": history, "val_top1": val_top1, "epoch": epoch, "step": step, "sums": list(sums),
                         "shuffle": epoch_shuffle if epoch_shuffle is not None else torch.zeros(0, dtype=torch.uint8),
                         "rng": torch.get_rng_state(), "done": done})

    trained = distributed.wrap(model)
    with make_progress() as progress:
        task = progress.add_task(desc, total=cfg.epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch + skip,
                                 info="")
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            epoch_shuffle = shuffle.get_state() if shuffle is not None else None
            if not skip:
                sums = [0.0, 0.0, 0.0, 0.0]  # task loss · n, L1 term · n, correct, seen
            batches = iter(train_loader)
            for _ in range(skip):  # a resumed epoch replays the same order and skips the steps already taken
                next(batches)
            if state is not None and epoch == start_epoch:  # dropout etc. continue where the checkpoint left them
                torch.set_rng_state(state["rng"])
            for step, (x, y) in enumerate(batches, start=skip):
                x, y = x.to(dev), y.to(dev)
                logits = trained(x)  # B, classes
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if use_kd:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    loss = (1 - distill.alpha) * loss + distill.alpha * distill_loss(logits, t_logits, distill.temperature)
                task_loss = loss.item()
                if gates is not None:
                    l1 = gates.l1()
                    loss = loss + lam * l1
                    sums[1] += lam * l1.item() * y.numel()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                sums[0] += task_loss * y.numel()
                sums[2] += (logits.argmax(-1) == y).sum().item()
                sums[3] += y.numel()
                progress.update(task, advance=1, info=_status(epoch, cfg.epochs, sums, val_top1, gates))
                if checkpoint is not None and checkpoint.every and (step + 1) % checkpoint.every == 0 \
                        and step + 1 < steps_per_epoch:
                    save(epoch, step + 1, epoch_shuffle, done=False)
            skip = 0
            val_top1 = evaluate_top1(model, val_loader) if val_loader is not None else None
            loss_sum, l1_sum, correct, seen = distributed.sum_across(sums)
            record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen, "val_top1": val_top1}
            if gates is not None:
                below = gates.count_below(1e-2, 1e-1)
                record |= {"l1_term": l1_sum / seen, "scores_below_1e-2": below[0], "scores_below_1e-1": below[1]}
            history.append(record)
            progress.update(task, info=_status(epoch, cfg.epochs, sums, val_top1, gates))
            if checkpoint is not None:
                save(epoch + 1, 0, shuffle.get_state() if shuffle is not None else None, done=epoch + 1 == cfg.epochs)
    model.eval()
    return {"epochs": history, "val_top1": val_top1}


def _status(epoch: int, epochs: int, sums: list, val: Optional[float], gates: Optional[GateSet]) -> str:
    """This rank's running figures for the progress bar."""
    seen = max(1.0, sums[3])
    loss, l1, acc = sums[0] / seen, sums[1] / seen, sums[2] / seen
    text = f"epoch {epoch + 1}/{epochs} {'task ' if gates is not None else ''}loss {loss:.3f} acc {acc:.3f}"
    if gates is not None:
        below = gates.count_below(1e-2, 1e-1)
        text += f" L1 {l1:.3f} scores<1e-2 {below[0]} <1e-1 {below[1]}/{gates.numel()}"
    return text + (f" val {val:.3f}" if val is not None else "")
