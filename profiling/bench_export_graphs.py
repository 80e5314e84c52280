"""The export issue's targets, measured with `vitdeploy export`'s own code. Writes results/export_graphs.json.

1. DeiT-S (random weights: only structure matters): the raw TorchScript export vs our clean FP32 graph vs what
   onnxslim (benchmark-only comparison, `pip install onnxslim`) leaves of the raw export: nodes, ops, and ORT CPU
   latency at batch 8 with 2 threads, interleaved; and the clean FP32 and INT8 graphs traced from timm's attention as
   it is, against the deploy form the exporter traces (q/k/v split first, the softmax scale folded). Target: clean
   nodes <= onnxslim's, 25 LayerNormalization, no Pow, clean no slower than raw.
2. DeiT-S ORT CPU latency at batch 8, 2 threads, interleaved: clean FP32 vs INT8 (Linear layers only, the default)
   vs INT8 with the attention matmuls too, and FP16 (for GPUs; ORT CPU has few FP16 kernels). Target: INT8 >= 1.5x
   FP32. The INT8 op profile shows which kernels run in int8 after ORT's fusions.
3. vit_digits trained on digits: val top-1 of the FP32, FP16 and INT8 graphs on ORT CPU (INT8 with each calibration
   method and both placements; FP16 also with FP16 storage emulated, since ORT CPU computes FP16 MatMuls in FP32).
   Targets: FP16 within 0.5 point of FP32, INT8 within 1 point.

    .venv/bin/python profiling/bench_export_graphs.py                  # the full run (~5-10 min on 2 quiet cores)
    .venv/bin/python profiling/bench_export_graphs.py --iters 3 --epochs 2 --calib-images 32 --no-write   # smoke
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import torch

from vitdeploy.bench.accuracy import evaluate
from vitdeploy.runtime.onnxrt import ort_op_profile
from vitdeploy.runtime.onnxrt import OrtRunner
from vitdeploy.runtime.torch import TorchRunner
from vitdeploy.data import calibration_subset, load_dataset, make_loader
from vitdeploy.deploy.fp16 import convert_fp16, emulate_fp16
from vitdeploy.deploy.graph import clean_graph
from vitdeploy.deploy.int8 import Int8Config, quantize_int8
from vitdeploy.deploy.onnx_export import export_onnx, onnx_summary, write_onnx
from vitdeploy.deploy.pipeline import ExportConfig, run_export
from vitdeploy.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gemm_roofline_gflops, interleaved_p50, write_result  # noqa: E402

THREADS, BATCH = 2, 8


def summary(path: Path) -> dict:
    s = onnx_summary(path)
    return {"nodes": s["nodes"], "LayerNormalization": s["ops"].get("LayerNormalization", 0),
            "Pow": s["ops"].get("Pow", 0), "Shape": s["ops"].get("Shape", 0), "ops": s["ops"]}


def onnxslim_of(raw: Path, out: Path) -> Optional[str]:
    """onnxslim's result for the raw export, or None with the reason when onnxslim is not installed."""
    try:
        import onnxslim
    except ImportError as e:
        return f"onnxslim is not installed ({e}); pip install onnxslim to compare"
    onnx.save(onnxslim.slim(onnx.load(str(raw))), str(out))
    return None


def timed(paths: dict[str, Path], x: np.ndarray, iters: int, warmup: int) -> dict[str, float]:
    """p50 ms of each graph on ORT CPU, `THREADS` intra-op threads, timed round-robin in this process."""
    runners = {k: OrtRunner(p, provider="cpu", threads=THREADS, spin=False) for k, p in paths.items()}
    for r in runners.values():
        r.activate()
    try:
        return interleaved_p50({k: (lambda r=r: r.infer(x)) for k, r in runners.items()}, iters, warmup)
    finally:
        for r in runners.values():
            r.deactivate()


def deit_graphs(tmp: Path, iters: int, warmup: int, calib_images: int) -> dict[str, Any]:
    loaded = load_model("deit_small_patch16_224")
    raw = export_onnx(loaded.model, tmp / "raw.onnx", loaded.input_size)
    clean, passes = clean_graph(onnx.load(str(raw)))
    write_onnx(clean, tmp / "clean.onnx")
    paths = {"raw": raw, "clean": tmp / "clean.onnx"}
    slim_note = onnxslim_of(raw, tmp / "onnxslim.onnx")
    if slim_note is None:
        paths["onnxslim"] = tmp / "onnxslim.onnx"
    structure = {k: summary(p) for k, p in paths.items()}

    # real images for calibration and timing: digits, resized to 224 and normalised for DeiT's data config
    ds = calibration_subset(load_dataset("digits", "train", loaded.data_config), calib_images + BATCH)
    images = torch.stack([ds[i][0] for i in range(len(ds))]).numpy()
    calib, x = images[:calib_images], images[calib_images:calib_images + BATCH]
    for name, cfg in (("int8_linear", Int8Config()), ("int8_with_attention", Int8Config(attention=True))):
        write_onnx(quantize_int8(clean, calib, cfg)[0], tmp / f"{name}.onnx")
        paths[name] = tmp / f"{name}.onnx"
    write_onnx(convert_fp16(clean), tmp / "fp16.onnx")
    paths["fp16"] = tmp / "fp16.onnx"
    # the same FP32 and INT8 (with attention) graphs from timm's attention as it is traced (one 5-D transpose of the
    # whole qkv output, the softmax scale as a Mul on q and k): what the deploy form buys
    asis = clean_graph(onnx.load(str(export_onnx(loaded.model, tmp / "raw_asis.onnx", loaded.input_size,
                                                 deploy_attention=False))))[0]
    write_onnx(asis, tmp / "clean_timm_attention.onnx")
    write_onnx(quantize_int8(asis, calib, Int8Config(attention=True))[0], tmp / "int8_with_attention_timm_attention.onnx")
    for name in ("clean_timm_attention", "int8_with_attention_timm_attention"):
        paths[name] = tmp / f"{name}.onnx"
        structure[name] = summary(paths[name])

    p50 = timed(paths, x, iters, warmup)
    nodes = {k: v["nodes"] for k, v in structure.items()}
    checks = {
        "clean_nodes_le_onnxslim": None if slim_note else nodes["clean"] <= nodes["onnxslim"],
        "clean_layernorms_25": structure["clean"]["LayerNormalization"] == 25,
        "clean_no_pow": structure["clean"]["Pow"] == 0,
        "clean_over_raw_latency": round(p50["clean"] / p50["raw"], 3),
        "int8_linear_speedup": round(p50["clean"] / p50["int8_linear"], 3),
        "int8_with_attention_speedup": round(p50["clean"] / p50["int8_with_attention"], 3),
        "fp16_speedup_on_ort_cpu": round(p50["clean"] / p50["fp16"], 3),
        "deploy_attention_fp32_speedup": round(p50["clean_timm_attention"] / p50["clean"], 3),
        "deploy_attention_int8_speedup": round(p50["int8_with_attention_timm_attention"] / p50["int8_with_attention"], 3),
        "int8_with_attention_speedup_timm_attention": round(p50["clean_timm_attention"]
                                                            / p50["int8_with_attention_timm_attention"], 3),
    }
    profile = {name: ort_op_profile(paths[name], "cpu", THREADS, x, runs=max(2, iters // 3), warmup=1, top=8)
               for name in ("clean", "int8_linear", "int8_with_attention")}
    return {"model": "deit_small_patch16_224 (random weights)", "batch": BATCH, "threads": THREADS,
            "iters": iters, "structure": structure, "cleanup_passes": passes, "onnxslim": slim_note or "compared",
            "p50_ms": p50, "checks": checks, "op_profile": profile,
            "int8_calibration": f"{calib_images} digits train images at 224x224, minmax"}


def top1(path: Path, loader: Any) -> float:
    with OrtRunner(path, provider="cpu", threads=THREADS) as r:
        return evaluate(r, loader)["top1"]


def digits_accuracy(tmp: Path, model_dir: Optional[str], epochs: int, calib_images: int) -> dict[str, Any]:
    if model_dir is None:
        from vitdeploy.compression.pipeline import run_train
        from vitdeploy.compression.recipe import TrainCfg
        from vitdeploy.compression.train import seed_everything

        seed_everything(0)
        model_dir = str(tmp / "vit_digits")
        run_train(load_model("vit_digits"), "digits", TrainCfg(epochs=epochs), Path(model_dir))
    loaded = load_model(model_dir)
    loader = make_loader(load_dataset("digits", "val", loaded.data_config), 120)
    with TorchRunner(loaded.model, threads=THREADS) as tr:
        torch_top1 = evaluate(tr, loader)["top1"]
    out = tmp / "deploy"
    rep = run_export(loaded, out, ExportConfig(precisions=["fp32", "fp16", "int8"], calib_images=calib_images))
    acc = {f"{a['precision']}": top1(out / a["file"], loader) for a in rep["artifacts"]}
    fp32 = onnx.load(str(out / "model.fp32.onnx"))
    write_onnx(emulate_fp16(fp32, onnx.load(str(out / "model.fp16.onnx"))), tmp / "fp16_emulated.onnx")
    acc["fp16_emulated"] = top1(tmp / "fp16_emulated.onnx", loader)
    calib = load_dataset("digits", "train", loaded.data_config)
    sub = calibration_subset(calib, calib_images)
    images = torch.stack([sub[i][0] for i in range(len(sub))]).numpy()
    for method in ("minmax", "percentile", "entropy"):
        for attention in (False, True):
            name = f"int8_{method}{'_with_attention' if attention else ''}"
            write_onnx(quantize_int8(fp32, images, Int8Config(method=method, attention=attention))[0], tmp / f"{name}.onnx")
            acc[name] = top1(tmp / f"{name}.onnx", loader)
    points = {k: round(100 * (acc["fp32"] - v), 2) for k, v in acc.items() if k != "fp32"}
    return {"model": "vit_digits trained on digits", "val_images": len(loader.dataset), "torch_fp32_top1": torch_top1,
            "top1": acc, "points_below_fp32": points, "fp16_parity": rep["fp16"]["agreement"],
            "checks": {"fp16_within_0.5_point": points["fp16"] <= 0.5 and points["fp16_emulated"] <= 0.5,
                       "int8_within_1_point": points["int8"] <= 1.0},
            "calib_images": calib_images}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20, help="timed iterations per DeiT-S variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40, help="vit_digits training epochs (when no --model-dir)")
    ap.add_argument("--model-dir", help="an already trained vit_digits model dir")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "deit").mkdir()
        deit = deit_graphs(tmp / "deit", args.iters, args.warmup, min(args.calib_images, 64))
        digits = digits_accuracy(tmp, args.model_dir, args.epochs, args.calib_images)
    payload = {"deit_s": deit, "vit_digits": digits, "gemm_roofline_gflops": round(gemm_roofline_gflops(THREADS), 1)}
    if args.no_write:
        import json
        print(json.dumps(payload, indent=2))
    else:
        write_result("export_graphs", payload, threads=THREADS)


if __name__ == "__main__":
    main()
