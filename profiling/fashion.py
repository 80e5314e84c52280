"""Shared by the Fashion-MNIST comparison benchmarks (bench_fashion_vtp, _mcf, _decompose, _hybrid, _peer).

- The shortened schedule: a full recipe (10 sparsity + 10 fine-tune epochs over 55,000 images) costs hours on two
  cores, so every side of every comparison gets the same shortened one, the recipe's own settings otherwise: a fixed
  subset of the train split (`train_images`, the same images for every seed and method), fewer sparsity and
  fine-tune epochs, the recipe's recovery epochs for MCF. Every top-1 is scored on the full 10,000-image test set.
- Seeds: the dense model is one (runs/fashion/dense, from bench_fashion_dense.py); each compression runs once per
  seed (data order, score initialisation, calibration draw), and each comparison pairs the sides per seed.
- A cache (runs/fashion/cache/<key>/) holds what several benchmarks share, VTP's sparsity phase per seed above all,
  and every finished side's per-image results, so a benchmark that stops resumes where it was. The key hashes the
  dense weights and the schedule: another dense model or schedule starts afresh.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vitdeploy.compression.context import CompressContext, make_context
from vitdeploy.compression.recipe import Recipe, load_recipe
from vitdeploy.compression.study import learned_scores
from vitdeploy.compression.train import fit, seed_everything
from vitdeploy.data import load_dataset, make_loader
from vitdeploy.io import atomic_write_bytes
from vitdeploy.models import count_macs, count_params, load_model

from common import paired_difference, top1_record

DATA = "fashion-mnist"
ROOT = Path(__file__).resolve().parent.parent
DENSE = ROOT / "runs/fashion/dense"
CACHE = ROOT / "runs/fashion/cache"
SCHEDULE = {"train_images": 20000, "sparsity.epochs": 2, "finetune.epochs": 2, "mcf.recovery_epochs": 1}
SEEDS = (0, 1)


def schedule_text(schedule: dict) -> str:
    return (f"shortened equally for every side: a fixed {schedule['train_images']:,}-image subset of the 55,000-image "
            f"train split, {schedule['sparsity.epochs']} sparsity epoch(s), {schedule['finetune.epochs']} fine-tune "
            f"epoch(s), {schedule['mcf.recovery_epochs']} MCF recovery epoch per FFN; the recipes' settings otherwise; "
            f"scored on the full 10,000-image test set")


PAPER_SITES = "prune.sites=[attn_in,attn_out,mlp_in,mlp_hidden]"  # VTP's four sites, as the paper prunes


def recipe(name: str, seed: int, schedule: dict = SCHEDULE, extra: Sequence[str] = ()) -> Recipe:
    """A packaged recipe with the shortened schedule and the seed (and `extra` overrides) applied. The paper
    comparisons reproduce VTP as published, so vtp-20 and vtp-40 get the paper's four sites unless `extra` says
    otherwise (the packaged recipes prune the residual width instead)."""
    paper = [PAPER_SITES] if name in ("vtp-20", "vtp-40") else []
    return load_recipe(name, [f"{k}={v}" for k, v in schedule.items()] + [f"seed={seed}", *paper, *extra])


def context(r: Recipe, dense: Path = DENSE) -> CompressContext:
    if not (dense / "vitdeploy.json").exists():
        raise SystemExit(f"no model dir at {dense}: run profiling/bench_fashion_dense.py first")
    return make_context(load_model(str(dense)), r, DATA)


def reseed(ctx: CompressContext, loader) -> None:
    """Every training phase starts from the seed, whatever ran before it in this process (or came from the cache)."""
    seed_everything(ctx.recipe.seed)
    loader.generator.manual_seed(ctx.recipe.seed)


def finetune(ctx: CompressContext, model: torch.nn.Module, desc: str) -> tuple[torch.nn.Module, dict]:
    """The recipe's fine-tune (distilled from the dense model as the recipe says), in place; the model and the
    per-epoch val curve."""
    loader = ctx.train_loader_for(ctx.recipe.finetune)
    reseed(ctx, loader)
    history = fit(model, loader, ctx.val_loader, ctx.recipe.finetune, teacher=ctx.dense, distill=ctx.recipe.distill,
                  desc=desc)
    return model, {"finetune_val_top1": [round(e["val_top1"], 4) for e in history["epochs"]]}


class TestSet:
    """The official 10,000 test images, preprocessed as the model expects; `correct(model)` is the per-image hit
    vector that every paired statistic is computed from."""

    def __init__(self, data_config: dict) -> None:
        self.loader = make_loader(load_dataset(DATA, "test", data_config), 500)

    @torch.no_grad()
    def correct(self, model: torch.nn.Module) -> np.ndarray:
        model = model.eval()
        return torch.cat([model(x).argmax(-1) == y for x, y in self.loader]).numpy()


class Cache:
    """Finished sides and shared phases on disk, under a key of the dense weights and the schedule."""

    def __init__(self, schedule: dict = SCHEDULE, dense: Path = DENSE) -> None:
        digest = hashlib.sha256((dense / "model.safetensors").read_bytes())
        digest.update(json.dumps(schedule, sort_keys=True).encode())
        self.folder = CACHE / digest.hexdigest()[:12]
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def get(self, key: str, make: Callable[[], object]) -> object:
        path = self._path(key)
        if path.exists():
            return torch.load(path, weights_only=False)
        value = make()
        buf = io.BytesIO()
        torch.save(value, buf)
        atomic_write_bytes(path, buf.getvalue())
        return value

    def vtp_scores(self, ctx: CompressContext, sites_recipe: Recipe, label: str) -> tuple[torch.nn.Module, dict]:
        """VTP's sparsity phase (the recipe's sites and settings) for ctx's seed: the ungated trained copy of the
        dense model and its scores, computed once and shared by every benchmark that prunes from them."""
        def make() -> dict:
            t = time.perf_counter()
            reseed(ctx, ctx.train_loader_for(sites_recipe.sparsity))
            base, scores = learned_scores(ctx, sites_recipe, f"sparsity ({label}, seed {ctx.recipe.seed})")
            return {"state": base.state_dict(), "scores": scores, "seconds": time.perf_counter() - t}

        key = f"sparsity-{label}-{'-'.join(sites_recipe.prune.sites)}-seed{ctx.recipe.seed}"
        saved = self.get(key, make)
        base = copy.deepcopy(ctx.dense)
        base.load_state_dict(saved["state"])
        return base.eval(), saved["scores"]


def side(cache: Cache, key: str, tests: TestSet, make: Callable[[], object], **info) -> dict:
    """One side of a comparison, cached: the model `make()` returns (or a (model, extra fields) pair), measured
    (params, MACs, seconds) and scored on every test image."""
    def run() -> dict:
        t = time.perf_counter()
        made = make()
        model, extra = made if isinstance(made, tuple) else (made, {})
        info.update(extra)
        seconds = time.perf_counter() - t
        size = tuple(tests.loader.dataset[0][0].shape)
        return {"params": count_params(model), "macs": count_macs(model, size), "seconds": round(seconds, 1),
                "correct": tests.correct(model), **info}
    return cache.get(key, run)


def record(s: dict) -> dict:
    """A side's row for a result file: its measures and top-1 with the 95 % Wilson interval (no per-image vector)."""
    return {k: v for k, v in s.items() if k != "correct"} | top1_record(s["correct"])


def across_seeds(a: list[np.ndarray], b: list[np.ndarray], resamples: int = 10_000) -> dict:
    """Side a minus side b over several seeds, paired per seed and per image: each seed's difference (bootstrap
    interval, McNemar's p), and the mean over seeds with a 95 % bootstrap interval over images (each image's
    difference averaged over the seeds, images resampled)."""
    per_seed = [paired_difference(x, y, resamples) for x, y in zip(a, b)]
    d = np.mean([x.astype(np.int8) - y.astype(np.int8) for x, y in zip(a, b)], axis=0)
    rng = np.random.default_rng(0)
    boots = np.array([d[rng.integers(0, d.size, d.size)].mean() for _ in range(resamples)])
    return {"mean_difference": float(d.mean()),
            "ci95_bootstrap": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "per_seed": per_seed}


def mean_top1(sides: list[dict], resamples: int = 10_000) -> dict:
    """The mean top-1 over seeds with a 95 % bootstrap interval over images (each image's hit rate averaged over
    the seeds, images resampled): the seeds share the test images, so pooling them as independent draws would
    understate the interval."""
    hits = np.mean([s["correct"] for s in sides], axis=0)
    rng = np.random.default_rng(0)
    boots = np.array([hits[rng.integers(0, hits.size, hits.size)].mean() for _ in range(resamples)])
    return {"top1": float(hits.mean()), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "per_seed": [float(s["correct"].mean()) for s in sides]}


def verdict(diff: dict, a: str, b: str) -> str:
    """One plain sentence: which side is better, or that they cannot be told apart at this sample size."""
    lo, hi = diff["ci95_bootstrap"]
    pts = 100 * diff["mean_difference"]
    if lo > 0:
        return f"{a} beats {b} by {pts:.2f} points (95 % interval {100 * lo:.2f} to {100 * hi:.2f})"
    if hi < 0:
        return f"{b} beats {a} by {-pts:.2f} points (95 % interval {-100 * hi:.2f} to {-100 * lo:.2f})"
    return (f"{a} and {b} cannot be told apart: {pts:+.2f} points, 95 % interval {100 * lo:+.2f} to "
            f"{100 * hi:+.2f}")


def plot_sides(rows: list[dict], path: Path, title: str, x: str = "macs") -> Path:
    """Top-1 (with its 95 % interval) against MACs or params, one point per side and stage, the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"before fine-tune": "o", "after fine-tune": "s", "dense": "*", "one-shot": "^", "scheduled": "D"}
    for i, r in enumerate(rows):
        lo, hi = r["ci95"]
        xs = r[x] / 1e6
        ax.errorbar(xs, 100 * r["top1"], yerr=[[100 * (r["top1"] - lo)], [100 * (hi - r["top1"])]],
                    fmt=markers.get(r["stage"], "o"), color=f"C{r.get('color', i) % 10}", capsize=3,
                    label=f"{r['label']} ({r['stage']})")
    ax.set_xlabel("MACs (M)" if x == "macs" else "params (M)")
    ax.set_ylabel("test top-1 (%), 95 % interval")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path



def curve_rows(points: list[dict], a: str, b: str) -> list[dict]:
    """Per point of a curve: both sides' mean top-1 over seeds and a minus b, paired per image."""
    rows = []
    for p in points:
        row = {k: v for k, v in p.items() if k not in (a, b)}
        row[a], row[b] = mean_top1(p[a]), mean_top1(p[b])
        row[f"{a}_minus_{b}"] = across_seeds([x["correct"] for x in p[a]], [x["correct"] for x in p[b]])
        rows.append(row)
    return rows


def plot_curve(rows: list[dict], series: dict[str, str], path: Path, title: str) -> Path:
    """Top-1 against MACs (each point's 95 % interval as a band), one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (key, label) in enumerate(series.items()):
        xs = [r["macs"] / 1e6 for r in rows]
        ys = [100 * r[key]["top1"] for r in rows]
        ax.plot(xs, ys, "o-", color=f"C{i + 1}", label=label)
        ax.fill_between(xs, [100 * r[key]["ci95"][0] for r in rows], [100 * r[key]["ci95"][1] for r in rows],
                        color=f"C{i + 1}", alpha=0.15)
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass
class Run:
    """What every comparison benchmark starts from: its arguments, the cache, the test set and the dense side."""
    args: argparse.Namespace
    seeds: list[int]
    cache: "Cache"
    tests: "TestSet"
    dense: dict
    t0: float


def start(description: str, recipe_name: str, schedule: dict = SCHEDULE, extra_args: Sequence[tuple] = ()) -> Run:
    """Parse --seeds and --threads (and `extra_args`: (flag, kwargs) pairs), pin the threads, open the cache for
    `schedule` and score the dense model on the test set."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--threads", type=int, default=2)
    for flag, kwargs in extra_args:
        ap.add_argument(flag, **kwargs)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    cache = Cache(schedule)
    ctx = context(recipe(recipe_name, seeds[0], schedule))
    tests = TestSet(ctx.data_config)
    return Run(args, seeds, cache, tests, side(cache, "dense", tests, lambda: ctx.dense), t0)


def elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 1)
