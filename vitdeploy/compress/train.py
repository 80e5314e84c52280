"""Supervised training and fine-tuning: AdamW, linear warm-up then cosine decay (per step), label smoothing,
optional logit distillation from a teacher, a progress bar with loss and accuracy."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitdeploy.compress.recipe import DistillCfg, TrainCfg
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
    was = model.training
    model.eval()
    correct = total = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        correct += (model(x).argmax(-1) == y).sum().item()
        total += y.numel()
    model.train(was)
    return correct / max(1, total)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Optional[DataLoader],
    cfg: TrainCfg,
    teacher: Optional[nn.Module] = None,
    distill: Optional[DistillCfg] = None,
    desc: str = "train",
) -> dict:
    """Train in place. Returns {"epochs": [{"epoch", "loss", "train_acc", "val_top1"}], "val_top1": last}."""
    history: list[dict] = []
    if cfg.epochs == 0:
        return {"epochs": history, "val_top1": None}
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = len(train_loader)
    sched = cosine_schedule(opt, cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
    use_kd = teacher is not None and distill is not None and distill.enabled
    if use_kd:
        teacher.eval()
    val_top1 = None
    with make_progress() as progress:
        task = progress.add_task(desc, total=cfg.epochs * steps_per_epoch, info="")
        for epoch in range(cfg.epochs):
            model.train()
            loss_sum = correct = seen = 0.0
            for x, y in train_loader:
                logits = model(x)  # B, classes
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if use_kd:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    loss = (1 - distill.alpha) * loss + distill.alpha * distill_loss(logits, t_logits, distill.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * y.numel()
                correct += (logits.argmax(-1) == y).sum().item()
                seen += y.numel()
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f} acc {correct / seen:.3f}"
                                + (f" val {val_top1:.3f}" if val_top1 is not None else ""))
            val_top1 = evaluate_top1(model, val_loader) if val_loader is not None else None
            history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen, "val_top1": val_top1})
            progress.update(task, info=f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum / seen:.3f} acc {correct / seen:.3f}"
                            + (f" val {val_top1:.3f}" if val_top1 is not None else ""))
    model.eval()
    return {"epochs": history, "val_top1": val_top1}
