"""Precisions on Fashion-MNIST's test set: FP32 against FP16 and against INT8 with every calibration method
(minmax, percentile, entropy), with and without the attention matmuls quantized, for the dense vit_fashion and for
one compressed model. Every graph is what `vitdeploy export` writes, run by ONNX Runtime on the CPU over all 10,000
test images; each top-1 comes with its 95 % Wilson interval, and each graph's difference from the same model's FP32
graph with a 95 % bootstrap interval over the same images and McNemar's exact p.

The dense model dir comes from bench_fashion_dense.py (runs/fashion/dense). The compressed model is `mlp-magnitude`
(40 % of the MLP hidden dims by weight magnitude) with its fine-tune shortened to --finetune-epochs (1 by default:
a precision comparison, not a compression one), unless --compressed names a model dir. Calibration: 256 images of
the train split. Writes results/fashion_precisions.json.

    python profiling/bench_fashion_precisions.py [--dense runs/fashion/dense] [--compressed DIR] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import vitdeploy
from vitdeploy.data import load_dataset, make_loader
from vitdeploy.runtime.compare import infer_in_range
from vitdeploy.runtime.registry import create_runner

from common import paired_difference, top1_record, write_result

DATA = "fashion-mnist"
CALIBRATIONS = ("minmax", "percentile", "entropy")


def graphs(model_dir: Path, folder: Path) -> dict[str, Path]:
    """Every precision variant of one model: fp32, fp16, and int8 per calibration method, without and with the
    attention matmuls."""
    out: dict[str, Path] = {}
    for method in CALIBRATIONS:
        for attention in (False, True):
            name = f"int8_{method}" + ("_attention" if attention else "")
            first = method == CALIBRATIONS[0] and not attention
            deploy = folder / name
            vitdeploy.export(str(model_dir), deploy, precisions=["fp32", "fp16", "int8"] if first else ["int8"],
                             calib_data=DATA, calib_images=256, calib_method=method, int8_attention=attention,
                             release_model=True)
            if first:
                out["fp32"], out["fp16"] = deploy / "model.fp32.onnx", deploy / "model.fp16.onnx"
            out[name] = deploy / "model.int8.onnx"
    return out


def per_image_correct(onnx_path: Path, model_dir: Path, threads: int) -> np.ndarray:
    """Per test image: did the graph's top-1 match the label."""
    loaded = vitdeploy.load_model(str(model_dir))
    ds = load_dataset(DATA, "test", loaded.data_config)
    hits = []
    with create_runner("ort-cpu", onnx_path=onnx_path, threads=threads) as runner:
        for x, y in make_loader(ds, 250):
            hits.append(infer_in_range(runner, x.numpy()).argmax(axis=1) == y.numpy())
    return np.concatenate(hits)


def compare(model_dir: Path, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = graphs(model_dir, Path(tmp))
        correct = {name: per_image_correct(p, model_dir, threads) for name, p in paths.items()}
    rows = {name: top1_record(c) for name, c in correct.items()}
    for name, c in correct.items():
        if name != "fp32":
            rows[name]["vs_fp32"] = paired_difference(c, correct["fp32"])
    return {"model_dir": str(model_dir), "graphs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", type=Path, default=Path("runs/fashion/dense"))
    ap.add_argument("--compressed", type=Path, help="a compressed model dir (default: mlp-magnitude, made here)")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (args.dense / "vitdeploy.json").exists():
        raise SystemExit(f"no model dir at {args.dense}: run profiling/bench_fashion_dense.py first")
    t0 = time.perf_counter()
    compressed, made = args.compressed, None
    if compressed is None:
        compressed = args.dense.parent / "mlp-magnitude-ft{}".format(args.finetune_epochs)
        if not compressed.exists():
            made = vitdeploy.compress(str(args.dense), "mlp-magnitude", compressed, data=DATA,
                                      overrides=[f"finetune.epochs={args.finetune_epochs}"])
    result = {
        "data": f"{DATA} test (10,000 images)", "backend": "ort-cpu", "calibration": "256 train-split images",
        "dense": compare(args.dense, args.threads),
        "compressed": compare(compressed, args.threads) | (
            {"recipe": "mlp-magnitude", "finetune_epochs": args.finetune_epochs,
             "macs_removed": made.macs_removed, "params_removed": made.params_removed} if made else {}),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result("fashion_precisions", result, threads=args.threads)


if __name__ == "__main__":
    main()
