"""DeiT-S on ONNX Runtime's CPU backend at batch 8: the INT8 graph the planner writes against FP32, against today's
fixed placements (Linear layers only; Linear layers and attention matmuls), and against NVIDIA ModelOpt's INT8 PTQ
(its defaults, and FP32 for the rest) on the same FP32 graph and the same calibration images.

DeiT-S has random weights here (no downloads), so its top-1 means nothing: the budget is agreement with FP32
(`--int8-min-agreement`), and every graph's agreement with FP32 is measured on digits val images at 224x224 (never
used for calibration or planning). The speed figures are interleaved ratios over rounds with 95 % bootstrap
intervals, threads pinned; ONNX Runtime's op profile says where the planned graph's time goes. Writes
results/int8_deit.json. Run it alone on the machine, under the timing lock:

    flock /tmp/vitdeploy-timing.lock python profiling/bench_int8_deit.py [--threads 2] [--min-agreement 0.95]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx
import torch

import vitdeploy
from vitdeploy.data import load_dataset
from vitdeploy.deploy.int8 import Int8Config, quantize_int8
from vitdeploy.deploy.onnx_export import write_onnx
from vitdeploy.deploy.pipeline import calibration_images

import bench_int8_modelopt as mo
from bench_int8_common import interleaved_ratios, op_profile, predictions, qdq_counts
from common import gemm_roofline_gflops, write_result

MODEL, DATA, BATCH = "deit_small_patch16_224", "digits", 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-agreement", type=float, default=0.95)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--plan-images", type=int, default=64)
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    loaded = vitdeploy.load_model(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        deploy = vitdeploy.export(loaded, tmp / "deploy", precisions=["fp32", "int8"], calib_data=DATA,
                                  calib_images=args.calib_images, int8_min_agreement=args.min_agreement,
                                  int8_plan_images=args.plan_images, target="cpu")
        export_s = round(time.perf_counter() - t0, 1)
        paths = {"fp32": deploy.graphs["fp32"], "planned": deploy.graphs["int8"]}
        clean = onnx.load(str(paths["fp32"]))
        calib, calib_info = calibration_images(loaded, DATA, args.calib_images)  # the export's own images
        for name, cfg in (("fixed_linear", Int8Config()), ("fixed_linear_attention", Int8Config(attention=True))):
            paths[name] = tmp / f"{name}.onnx"
            write_onnx(quantize_int8(clean, calib, cfg)[0], paths[name])
        modelopt_paths, modelopt = mo.quantize_all(paths["fp32"], calib, tmp)
        paths.update(modelopt_paths)
        ds = load_dataset(DATA, "val", loaded.data_config)
        images = torch.stack([ds[i][0] for i in range(min(args.eval_images, len(ds)))]).numpy()
        preds = {k: predictions(p, images, args.threads) for k, p in paths.items()}
        agreement = {k: round(float((v == preds["fp32"]).mean()), 4) for k, v in preds.items()}
        x = images[:BATCH]
        speed = interleaved_ratios(paths, x, args.threads, rounds=args.rounds)
        profiles = {k: op_profile(paths[k], x, args.threads) for k in ("fp32", "fixed_linear", "planned")
                    + (("modelopt_fp32_rest",) if "modelopt_fp32_rest" in paths else ())}
        counts = {k: qdq_counts(p) for k, p in paths.items()}
    plan = deploy.record["int8"]["plan"]
    result = {
        "model": f"{MODEL} (random weights, torch seed 0)", "backend": "ort-cpu", "batch": BATCH,
        "threads": args.threads,
        "calibration": calib_info, "held_out": deploy.record["int8"]["held_out"],
        "budget": plan["budget"], "agreement_images": f"{len(images)} {DATA} val images at 224x224",
        "plan": {k: plan[k] for k in ("fp32", "full", "planned", "predicted", "search", "held_out")},
        "plan_speed_in_export": plan.get("speed"),
        "planned_layers": deploy.record["int8"]["quantized_layers"],
        "sensitivity": [{k: r[k] for k in ("layer", "calibration", "alone_loss_points", "left_out_gain_points",
                                          "fp32_ms", "int8_ms", "gain_ms", "int8")} for r in plan["layers"]],
        "agreement_with_fp32": agreement, "qdq": counts, "speed": speed, "op_profile": profiles,
        "modelopt": modelopt, "gemm_roofline_gflops": round(gemm_roofline_gflops(args.threads), 1),
        "target_speedup": 2.5, "export_s": export_s, "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result("int8_deit", result, threads=args.threads)


if __name__ == "__main__":
    main()
