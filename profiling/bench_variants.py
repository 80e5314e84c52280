"""The project's published table: dense against compressed against precision, accuracy next to measured speed.

vit_digits (trained here on the bundled digits data) and DeiT-S (random weights and a training-free magnitude plan:
only shapes matter for speed) are compressed with `vitdeploy compress --recipe vtp-40` (DeiT-S: `prune.importance=magnitude`), exported at every
precision this build's `vitdeploy export` supports (`vitdeploy.precision.PRECISIONS`), evaluated on the digits
val split (vit_digits only), and timed on onnxruntime CPU with 2 threads at batch 1 and 8: all variants × precisions
of one model interleaved in one process, reported as ratios to dense fp32. Where a CUDA GPU exists, PyTorch CUDA
FP16 (autocast) at batch 1 and 64 is added for the same variants. Writes results/variants.json.

    python profiling/bench_variants.py                             # the full run (a quiet machine)
    python profiling/bench_variants.py --smoke --models vit_digits  # a quick check that it works
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vitdeploy.bench.accuracy import evaluate_artifacts
from vitdeploy.bench.artifacts import pair_backends, resolve_artifacts
from vitdeploy.bench.latency import make_input
from vitdeploy.runtime.onnxrt import OrtRunner
from vitdeploy.runtime.torch import TorchRunner
from vitdeploy.precision import PRECISIONS
from vitdeploy.models import count_macs, count_params, load_model

from common import interleaved_p50, write_result

THREADS = 2
CPU_BATCHES, GPU_BATCHES = (1, 8), (1, 64)
MODELS = {"vit_digits": "vit_digits", "deit_small": "deit_small_patch16_224"}


def vitdeploy(*args: object) -> None:
    """Run a vitdeploy command exactly as a user would (its progress goes to the terminal)."""
    subprocess.run([sys.executable, "-m", "vitdeploy", *map(str, args)], check=True)


def build(model: str, work: Path, smoke: bool) -> dict[str, str]:
    """variant name -> MODEL argument (a model dir, or the timm name for random-weight DeiT-S dense)."""
    dense, small = work / "dense", work / "vtp-40"
    if model == "vit_digits":
        vitdeploy("train", "vit_digits", "--data", "digits", "--out", dense, "--epochs", 3 if smoke else 40)
        quick = ["--set", "finetune.epochs=1", "--set", "sparsity.epochs=1"] if smoke else []
        vitdeploy("compress", dense, "--recipe", "vtp-40", "--data", "digits", "--out", small, *quick)
        return {"dense": str(dense), "vtp-40": str(small)}
    # no data: the training-free importance gives a vtp-40-shaped plan; plan and slice only
    vitdeploy("compress", MODELS[model], "--recipe", "vtp-40", "--set", "prune.importance=magnitude", "--out", small)
    return {"dense": MODELS[model], "vtp-40": str(small)}


def export(variant_model: str, out: Path) -> Path:
    """Every precision this build exports; digits images for parity and INT8 calibration of random-weight models."""
    vitdeploy("export", variant_model, "--precision", ",".join(PRECISIONS), "--data", "digits",
              *(["--calib-data", "digits"] if "int8" in PRECISIONS else []), "--out", out)
    return out


def cpu_rows(model: str, deploys: dict[str, Path], trained: bool, iters: int) -> list[dict]:
    """Top-1 of each graph (digits val) and p50 of every variant × precision, interleaved, per batch size."""
    arts = {(v, a.precision): a for v, d in deploys.items() for a in resolve_artifacts(str(d)) if a.kind == "onnx"}
    top1 = {}
    if trained:
        pairs, _ = pair_backends([list(arts.values())], ["ort-cpu"])
        by_label = {a.label: k for k, a in arts.items()}
        for rec in evaluate_artifacts(pairs, "digits", show_progress=False):
            top1[by_label[rec["artifact"]]] = rec["top1"]
    # all sessions live at once and run round-robin: no spin-waiting, or idle sessions' threads steal the 2 cores
    runners = {k: OrtRunner(a.onnx_path, threads=THREADS, spin=False) for k, a in arts.items()}
    size = next(iter(arts.values())).input_size
    timings = {}
    for r in runners.values():
        r.activate()
    try:
        for b in CPU_BATCHES:
            x = make_input(b, size)
            timings[b] = interleaved_p50({k: (lambda r=r: r.infer(x)) for k, r in runners.items()}, iters)
    finally:
        for r in runners.values():
            r.deactivate()
    rows = []
    for (variant, precision) in arts:
        rows.append({"model": model, "variant": variant, "precision": precision, "top1": top1.get((variant, precision)),
                     "ort_cpu": {f"b{b}": {"p50_ms": timings[b][(variant, precision)],
                                           "speedup": timings[b][("dense", "fp32")] / timings[b][(variant, precision)]}
                                 for b in CPU_BATCHES}})
    return rows


def gpu_rows(variants: dict[str, str], iters: int) -> dict[str, dict]:
    """PyTorch CUDA fp16 autocast p50 per variant at batch 1 and 64, interleaved; {} without a GPU."""
    if not torch.cuda.is_available():
        return {}
    loaded = {v: load_model(m) for v, m in variants.items()}
    runners = {v: TorchRunner(lm.model, device="cuda") for v, lm in loaded.items()}
    size = next(iter(loaded.values())).input_size
    out: dict[str, dict] = {v: {} for v in variants}
    for r in runners.values():
        r.activate()
    try:
        for b in GPU_BATCHES:
            x = make_input(b, size)
            p50 = interleaved_p50({v: (lambda r=r: r.infer(x)) for v, r in runners.items()}, iters)
            for v in variants:
                out[v][f"b{b}"] = {"p50_ms": p50[v], "images_per_s": b * 1000 / p50[v], "speedup": p50["dense"] / p50[v]}
    finally:
        for r in runners.values():
            r.deactivate()
    return out


def sizes(variants: dict[str, str]) -> dict[str, dict]:
    out = {}
    for v, m in variants.items():
        lm = load_model(m)
        out[v] = {"params": count_params(lm.model), "macs": count_macs(lm.model, lm.input_size)}
    return out


def markdown(rows: list[dict]) -> str:
    head = ["model", "variant", "precision", "params", "MACs", "top-1"]
    head += [f"ort-cpu b{b} p50 ms (speedup)" for b in CPU_BATCHES]
    has_gpu = any(r.get("torch_cuda_fp16") for r in rows)
    head += [f"cuda fp16 b{b} p50 ms (speedup)" for b in GPU_BATCHES] if has_gpu else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        macs = f"{r['macs'] / 1e9:.2f} G" if r["macs"] >= 1e9 else f"{r['macs'] / 1e6:.1f} M"
        cells = [r["model"], r["variant"], r["precision"], f"{r['params'] / 1e6:.2f} M", macs,
                 "—" if r["top1"] is None else f"{100 * r['top1']:.1f} %"]
        cells += [f"{r['ort_cpu'][f'b{b}']['p50_ms']:.2f} ({r['ort_cpu'][f'b{b}']['speedup']:.2f}×)" for b in CPU_BATCHES]
        if has_gpu:
            gpu = r.get("torch_cuda_fp16") or {}
            cells += [f"{gpu[f'b{b}']['p50_ms']:.2f} ({gpu[f'b{b}']['speedup']:.2f}×)" if gpu else "—" for b in GPU_BATCHES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="few epochs and iterations: check that it runs")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            work = Path(tmp) / model
            variants = build(model, work, args.smoke)
            deploys = {v: export(m, work / f"{v}.deploy") for v, m in variants.items()}
            iters = 5 if args.smoke else (200 if model == "vit_digits" else 30)
            model_rows = cpu_rows(model, deploys, trained=model == "vit_digits", iters=iters)
            gpu, size = gpu_rows(variants, 5 if args.smoke else 100), sizes(variants)
            for r in model_rows:
                r.update(size[r["variant"]])
                if r["precision"] == "fp32" and gpu:
                    r["torch_cuda_fp16"] = gpu[r["variant"]]
            rows += model_rows
    table = markdown(rows)
    print(table)
    write_result("variants", {
        "what": "dense vs vtp-40 vs precision: top-1 (digits val) and p50 latency, ort-cpu 2 threads interleaved; "
                "PyTorch CUDA fp16 autocast where a GPU exists (shown on the fp32 rows: it runs the fp32 weights)",
        "precisions": list(PRECISIONS), "threads": THREADS, "smoke": args.smoke, "gpu": torch.cuda.is_available(),
        "rows": rows, "table_md": table,
    }, threads=THREADS)


if __name__ == "__main__":
    main()
