"""Accuracy over any Runner: top-1/top-5 against labels and, optionally, agreement with a reference runner
(e.g. the fp32 PyTorch model) so a compressed or exported variant is judged on both."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch

from vitdeploy.errors import VitDeployError
from vitdeploy.runtime.base import Runner
from vitdeploy.runtime.compare import cosine_per_sample, infer_in_range

if TYPE_CHECKING:
    from vitdeploy.bench.artifacts import Artifact


def _as_numpy(x: torch.Tensor | np.ndarray, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-sample bool: is the label among the k highest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < logits.shape[1] else np.arange(logits.shape[1])[None]
    return (top == labels[:, None]).any(axis=1)


def evaluate(runner: Runner, batches: Iterable[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
             reference: Runner | None = None, progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Top-1 / top-5 (k = min(5, classes)) of `runner` over (images, labels) batches, as fractions.

    With `reference`, also top-1 agreement and mean cosine of the logits against it. Runners that are not
    active are activated for the call. `progress(n)` is called with each batch's size.
    """
    n = top1 = top5 = agree = 0
    cos_sum = 0.0
    k = 5
    with contextlib.ExitStack() as stack:
        for r in (runner, reference):
            if r is not None and not r.active:
                stack.enter_context(r)
        for images, labels in batches:
            x = _as_numpy(images, np.float32)
            y = _as_numpy(labels, np.int64).reshape(-1)
            logits = infer_in_range(runner, x)
            if logits.ndim != 2 or len(logits) != len(y):
                raise VitDeployError(f"runner {runner.name!r} gave logits of shape {logits.shape} for {len(y)} labels")
            k = min(5, logits.shape[1])
            top1 += int((logits.argmax(axis=1) == y).sum())
            top5 += int(topk_correct(logits, y, k).sum())
            if reference is not None:
                ref = infer_in_range(reference, x)
                agree += int((logits.argmax(axis=1) == ref.argmax(axis=1)).sum())
                cos_sum += float(cosine_per_sample(logits, ref).sum())
            n += len(y)
            if progress is not None:
                progress(len(y))
    if n == 0:
        raise VitDeployError("no samples to evaluate: the data gave no batches")
    out: dict[str, Any] = {"n": n, "top1": top1 / n, "top5": top5 / n, "topk": k}
    if reference is not None:
        out.update(top1_agreement=agree / n, cosine_mean=cos_sum / n, reference=reference.name)
    return out


def eval_out_paths(template: str | None, jobs: list[tuple[Artifact, str]]) -> list[Path | None]:
    """Where each (artifact, backend) eval is written: `template` formatted with {precision}, {backend} and
    {variant}. Several evals need a placeholder that tells them apart; checked before anything runs."""
    if template is None:
        return [None] * len(jobs)
    try:
        paths = [Path(template.format(precision=a.precision_on(b), backend=b, variant=a.variant or "model"))
                 for a, b in jobs]
    except (KeyError, IndexError, ValueError) as e:
        raise VitDeployError(f"--out '{template}' has a placeholder other than {{precision}}, {{backend}}, {{variant}} ({e})") from None
    if len(set(paths)) != len(paths):
        tags = ", ".join(f"{a.precision_on(b)} on {b}" for a, b in jobs)
        raise VitDeployError(f"--out '{template}' names one file for {len(jobs)} evaluations ({tags}); put {{precision}} "
                             "(and {backend} if needed) in it, e.g. RUN/eval.{precision}.json")
    return paths


def check_fits(art: Artifact, ds: Any, data: str, reference: Artifact | None) -> None:
    """A top-1 is only meaningful when the artifact scores exactly the data's classes, and an agreement only when
    the reference takes the same images and gives the same number of logits."""
    from vitdeploy.errors import DataError, VitDeployError

    classes = getattr(ds, "num_classes", None)
    if art.num_classes is not None and classes is not None and art.num_classes != classes:
        raise DataError(f"'{art.label}' scores {art.num_classes} classes but {data} has {classes}: evaluate it on "
                        f"the data it was trained for")
    if reference is None:
        return
    if tuple(reference.input_size) != tuple(art.input_size):
        raise VitDeployError(f"--reference '{reference.label}' takes {tuple(reference.input_size)} images but "
                             f"'{art.label}' takes {tuple(art.input_size)}: compare artifacts of the same model")
    if None not in (reference.num_classes, art.num_classes) and reference.num_classes != art.num_classes:
        raise VitDeployError(f"--reference '{reference.label}' gives {reference.num_classes} logits but "
                             f"'{art.label}' gives {art.num_classes}: compare artifacts of the same model")


def evaluate_artifacts(jobs: list[tuple[Artifact, str]], data: str, reference: Artifact | None = None,
                       batch_size: int = 64, show_progress: bool = True, split: str | None = None,
                       skip_bad_images: bool = False) -> list[dict[str, Any]]:
    """Top-1/top-5 of each (artifact, backend) on a split of `data` (default: the official test set where the
    dataset has one, else val), with agreement against `reference`.

    Each record carries the artifact's kind, precision (as computed on that backend), sha256 and variant, so a
    report can tell the fp16 graph's accuracy from the fp32 one's.
    """
    from vitdeploy.bench.artifacts import DEFAULT_BACKEND
    from vitdeploy.data import default_eval_split, load_dataset, make_loader, splits_of
    from vitdeploy.data.specs import check_split
    from vitdeploy.progress import make_progress

    split = check_split(split or default_eval_split(data), splits_of(data))
    records = []
    datasets = [load_dataset(data, split, art.data_config, skip_bad_images=skip_bad_images)
                for art, _ in jobs]  # data errors (a bad image, a class mismatch) before any bar is drawn
    for (art, _), ds in zip(jobs, datasets):
        check_fits(art, ds, data, reference)
    with make_progress(transient=True) as bar:
        for (art, backend), ds in zip(jobs, datasets):
            task = bar.add_task(f"eval {Path(art.label).name} [{backend}]", total=len(ds), info="",
                                visible=show_progress)
            ref_runner = reference.runner(DEFAULT_BACKEND[reference.kind]) if reference is not None else None
            r = evaluate(art.runner(backend), make_loader(ds, batch_size), reference=ref_runner,
                         progress=lambda n, t=task: bar.advance(t, n))
            bar.remove_task(task)
            rec = {**art.describe(), "precision": art.precision_on(backend), "backend": backend, "data": data,
                   "split": split, **r}
            if reference is not None:
                rec["reference"] = reference.label
            if skip_bad_images:
                rec["skipped_images"] = list(getattr(ds, "skipped", []))
            records.append(rec)
    return records
