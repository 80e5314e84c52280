"""vit_fashion on Fashion-MNIST's 10,000 test images: the INT8 graph planned with `--int8-max-drop 0.5` against
FP32, beside the full placement the plan starts from (every Linear and both attention matmuls in INT8, from the
same calibration), today's fixed placement (Linear layers, minmax), and NVIDIA ModelOpt's INT8 PTQ (its defaults,
and FP32 for the rest) on the same FP32 graph and the same 256 calibration images.

Planning sees only the calibration images (train split) and 1,000 held-out val images (carved from the official
training file); the test set scores the result. Each top-1 has its 95 % Wilson interval and each graph's
difference from FP32 a 95 % paired bootstrap interval and McNemar's exact p over the same images. Q/DQ counts and
ORT CPU speed at batch 8 (interleaved rounds, per-round ratios, bootstrap intervals, threads pinned) complete the
comparison. The model dir comes from bench_fashion_dense.py. Writes results/int8_fashion.json; run it under the
timing lock:

    flock /tmp/vitdeploy-timing.lock python profiling/bench_int8_fashion.py [--dense runs/fashion/dense] [--threads 2]
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
from vitdeploy.deploy.calibrate import choose, collect_histograms
from vitdeploy.deploy.int8 import Int8Config, quantize_int8
from vitdeploy.deploy.int8_plan import find_units
from vitdeploy.deploy.qdq import QdqBuilder
from vitdeploy.deploy.onnx_export import write_onnx
from vitdeploy.deploy.pipeline import calibration_images

import bench_int8_modelopt as mo
from bench_int8_common import interleaved_ratios, predictions, qdq_counts
from common import paired_difference, top1_record, write_result

DATA, BATCH, MAX_DROP = "fashion-mnist", 8, 0.5


def full_placement(clean: onnx.ModelProto, calib, scratch: Path) -> onnx.ModelProto:
    """The plan's starting point, built as the planner builds it (same calibration, per-tensor choice): every
    Linear and both attention matmuls in INT8."""
    probe = QdqBuilder(clean, {})
    nodes = [u.node for u in find_units(clean)]
    hist = collect_histograms(clean, [t for n in nodes for t in probe.activations(n)], calib, scratch)
    return QdqBuilder(clean, {t: choose(h, "auto")[1] for t, h in hist.items()}).build(nodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", type=Path, default=Path("runs/fashion/dense"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--plan-images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if not (args.dense / "vitdeploy.json").exists():
        raise SystemExit(f"no model dir at {args.dense}: run profiling/bench_fashion_dense.py first")
    t0 = time.perf_counter()
    loaded = vitdeploy.load_model(str(args.dense))
    common = dict(calib_data=DATA, calib_images=args.calib_images, int8_plan_images=args.plan_images, target="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        planned = vitdeploy.export(loaded, tmp / "planned", precisions=["fp32", "int8"], int8_max_drop=MAX_DROP,
                                   **common)
        paths = {"fp32": planned.graphs["fp32"], "planned": planned.graphs["int8"], "full": tmp / "full.onnx"}
        calib, calib_info = calibration_images(loaded, DATA, args.calib_images)  # the export's own images
        write_onnx(full_placement(onnx.load(str(paths["fp32"])), calib, tmp), paths["full"])
        paths["fixed_linear"] = tmp / "fixed_linear.onnx"
        write_onnx(quantize_int8(onnx.load(str(paths["fp32"])), calib, Int8Config())[0], paths["fixed_linear"])
        modelopt_paths, modelopt = mo.quantize_all(paths["fp32"], calib, tmp)
        paths.update(modelopt_paths)
        test = load_dataset(DATA, "test", loaded.data_config)
        xs, ys = zip(*(test[i] for i in range(len(test))))
        images, labels = torch.stack(xs).numpy(), torch.tensor([int(y) for y in ys]).numpy()
        correct = {k: predictions(p, images, args.threads, batch=250) == labels for k, p in paths.items()}
        speed = interleaved_ratios(paths, images[:BATCH], args.threads, rounds=args.rounds)
        counts = {k: qdq_counts(p) for k, p in paths.items()}
    rows = {k: top1_record(c) for k, c in correct.items()}
    for k, c in correct.items():
        if k != "fp32":
            rows[k]["vs_fp32"] = paired_difference(c, correct["fp32"])
            rows[k]["drop_points"] = round(100 * (rows["fp32"]["top1"] - rows[k]["top1"]), 2)
    plan = planned.record["int8"]["plan"]
    result = {
        "model_dir": str(args.dense), "data": f"{DATA} test (10,000 images)", "backend": "ort-cpu",
        "calibration": calib_info, "held_out": planned.record["int8"]["held_out"], "budget": plan["budget"],
        "plan": {k: plan[k] for k in ("fp32", "full", "planned", "predicted", "search", "held_out")},
        "planned_layers": planned.record["int8"]["quantized_layers"],
        "sensitivity": [{k: r[k] for k in ("layer", "calibration", "alone_loss_points", "left_out_gain_points",
                                          "fp32_ms", "int8_ms", "gain_ms", "int8")} for r in plan["layers"]],
        "test": rows, "qdq": counts, "speed": speed, "modelopt": modelopt,
        "checks": {"planned_drop_le_0.5": rows["planned"]["drop_points"] <= MAX_DROP},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result("int8_fashion", result, threads=args.threads)


if __name__ == "__main__":
    main()
