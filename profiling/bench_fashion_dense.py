"""Dense vit_fashion on Fashion-MNIST: train with the model's default training config (models.registry.TRAIN_DEFAULTS)
through the same library call as `vitdeploy train vit_fashion --data fashion-mnist --out DIR`, then measure top-1 on
the official 10,000-image test set with its 95 % Wilson interval.

Records the per-epoch curve (val top-1 on the held-out 5,000, loss, train accuracy, seconds), the training wall time
and CPU time, the machine's load before and after (a shared machine slows training), and the host.
Target (issue 13): >= 91 % test top-1 within 15 minutes on a 2-core CPU. Writes results/fashion_dense.json (and the curve, fashion_dense.png) and keeps
the trained model dir (default runs/fashion/dense) for the compression benchmarks.

    python profiling/bench_fashion_dense.py [--out runs/fashion/dense] [--threads 2] [--epochs N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import torch

import vitdeploy.compression.pipeline as pipeline
from vitdeploy.compression.recipe import TrainCfg
from vitdeploy.compression.train import seed_everything
from vitdeploy.data import default_eval_split, load_dataset, make_loader
from vitdeploy.models import count_macs, count_params, load_model
from vitdeploy.models.registry import TRAIN_DEFAULTS, VIT_FASHION_ARGS

from common import wilson, write_result
from fashion import DENSE, ROOT

MODEL, DATA = "vit_fashion", "fashion-mnist"
TARGET_TOP1, TARGET_MINUTES = 0.91, 15.0


class _Stamped:
    """A loader that notes the time whenever an epoch (or an evaluation) starts iterating it."""

    def __init__(self, loader, stamps: list) -> None:
        self.loader, self.stamps, self.generator = loader, stamps, loader.generator

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.stamps.append(time.perf_counter())
        return iter(self.loader)


def train_with_curve(cfg: TrainCfg, out: Path, seed: int) -> tuple[dict, list[dict], float, float]:
    """run_train (what `vitdeploy train` calls), with each epoch's training and evaluation seconds noted."""
    train_starts, val_starts = [], []
    real_fit = pipeline.fit

    def timed_fit(model, train_loader, val_loader, *args, **kwargs):
        return real_fit(model, _Stamped(train_loader, train_starts), _Stamped(val_loader, val_starts), *args, **kwargs)

    pipeline.fit = timed_fit
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        summary = pipeline.run_train(load_model(MODEL), DATA, cfg, out, seed=seed)
    finally:
        pipeline.fit = real_fit
    wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    assert len(train_starts) == cfg.epochs == len(summary["history"]), "run_train no longer goes through fit"
    ends = [*train_starts[1:], t0 + wall]
    curve = [dict(row, train_s=round(v - t, 1), eval_and_checkpoint_s=round(e - v, 1), elapsed_s=round(e - t0, 1))
             for row, t, v, e in zip(summary["history"], train_starts, val_starts, ends)]
    return summary, curve, wall, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


@torch.no_grad()
def test_top1(model_dir: Path) -> dict:
    loaded = load_model(str(model_dir))
    model = loaded.model.eval()
    split = default_eval_split(DATA)
    ds = load_dataset(DATA, split, loaded.data_config)
    t = time.perf_counter()
    preds = torch.cat([model(x).argmax(-1) for x, _ in make_loader(ds, 500)])
    correct = int((preds == ds.labels).sum())
    lo, hi = wilson(correct, len(ds))
    per_class = [round(float((preds[ds.labels == c] == c).float().mean()), 4) for c in range(ds.num_classes)]
    return {"split": split, "n": len(ds), "correct": correct, "top1": correct / len(ds), "ci95_wilson": [lo, hi],
            "per_class_top1": dict(zip(ds.classes, per_class)), "eval_s": round(time.perf_counter() - t, 1)}


def plot_curve(result: dict, path: Path) -> Path:
    """Val top-1 and train accuracy per epoch against elapsed minutes, the test top-1 with its interval, and the
    targets (91 %, 15 minutes)."""
    import matplotlib.pyplot as plt

    from vitdeploy.viz.plots import save_figure

    curve = result["curve"]
    minutes = [r["elapsed_s"] / 60 for r in curve]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(minutes, [100 * r["val_top1"] for r in curve], "o-", label="val top-1 (5,000 held out)")
    ax.plot(minutes, [100 * r["train_acc"] for r in curve], "s--", alpha=0.6, label="train accuracy (running)")
    test = result["test"]
    lo, hi = (100 * v for v in test["ci95_wilson"])
    ax.errorbar([minutes[-1]], [100 * test["top1"]], yerr=[[100 * test["top1"] - lo], [hi - 100 * test["top1"]]],
                fmt="D", color="black", capsize=4, label=f"test top-1 {100 * test['top1']:.2f} % (95 % CI)")
    ax.axhline(100 * TARGET_TOP1, color="grey", lw=0.8, ls=":")
    ax.axvline(TARGET_MINUTES, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training time, minutes (2 threads)")
    ax.set_ylabel("top-1 %")
    ax.set_title(f"{MODEL} on Fashion-MNIST, {len(curve)} epochs")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DENSE,
                    help="the model dir (default: runs/fashion/dense in the repo, where the other Fashion benchmarks read it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="override the default epochs (for a quick look)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shown = os.path.relpath(args.out, ROOT)  # what the result file records: the path from the repo root

    torch.set_num_threads(args.threads)
    cfg = TrainCfg(**{**TRAIN_DEFAULTS[MODEL], **({"epochs": args.epochs} if args.epochs else {})})
    if args.out.exists():
        shutil.rmtree(args.out)
    seed_everything(args.seed)
    load_before = os.getloadavg()
    summary, curve, wall, cpu = train_with_curve(cfg, args.out, args.seed)
    load_after = os.getloadavg()
    test = test_top1(args.out)
    name = "fashion_dense" if args.epochs is None else f"fashion_dense_{args.epochs}epochs"  # a quick look keeps the default run
    written = write_result(name, {
        "model": MODEL, "model_args": VIT_FASHION_ARGS, "data": DATA,
        "splits": {"train": 55_000, "val": 5_000, "test": 10_000},
        "params": count_params(load_model(MODEL).model), "macs": count_macs(load_model(MODEL).model, (3, 28, 28)),
        "train_config": vars(cfg) | {"seed": args.seed},
        "command": f"vitdeploy train {MODEL} --data {DATA} --out {shown} (defaults from TRAIN_DEFAULTS)",
        "curve": curve,
        "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
        "load_average_1_5_15": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in load_after]},
        "test": test,
        "targets": {"test_top1": f">= {TARGET_TOP1:.0%}", "train_minutes": f"<= {TARGET_MINUTES:g}"},
        "met": {"test_top1": test["top1"] >= TARGET_TOP1, "train_minutes": wall / 60 <= TARGET_MINUTES},
        "model_dir": shown,
    }, threads=args.threads)
    plot_curve(json.loads(Path(written).read_text()), Path(written).with_suffix(".png"))


if __name__ == "__main__":
    main()
