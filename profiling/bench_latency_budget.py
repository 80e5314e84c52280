"""Latency-budget planning on DeiT-S, ONNX Runtime CPU (random weights: only shapes matter for speed; training-free
magnitude importance, no data): `vitdeploy compress deit_small_patch16_224 --recipe latency-50 --set
prune.importance=magnitude prune.budget.batch=B`, at batch 1 and batch 8, each run end to end through the API as a
user runs it (table measured first, plan, pruned model timed against dense interleaved, replans on a miss).

Targets (latency-budget issue): the plan's measured latency within ±5 % of half the dense latency (interleaved,
same run); the table predicts the dense model within 10 % and the first pruned plan within 10 % before any
correction. Both are read free of the machine's drift: the dense model is timed in the table's own interleaved run
(the anchor: the units' raw sum against it), and the first plan's predicted fraction of dense against its
measured, paired fraction; the absolute figures across the minutes between table and verification are kept too; against the rate-based plan at the same measured latency (within 3 %), at least as much retained
importance. The rate-based side is searched to the same predicted latency and timed with the dense model and the
budget plan in one more interleaved run, which is also a second, independent measurement of the budget plan's
ratio. Writes results/latency_budget.json.

    python profiling/bench_latency_budget.py [--batches 1,8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import write_result
from vitdeploy import api

MODEL = "deit_small_patch16_224"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            api.compress(MODEL, "latency-50", Path(tmp) / "out", overrides=[
                "prune.importance=magnitude", f"prune.budget.batch={batch}", f"prune.budget.threads={args.threads}",
                f"prune.budget.latency_ratio={args.ratio}"])
            rep = json.loads((Path(tmp) / "out" / "compress.json").read_text())
        b, first = rep["budget"], rep["budget"]["rounds"][0]
        rate = b["rate_based"]
        second_ratio = rate["budget_plan_measured_ms"] / rate["dense_measured_ms"]
        rows.append({
            "batch": batch, "seconds": time.time() - start, "target_ratio": args.ratio,
            "measured_ratio": b["measured_ratio"], "ratio_ci95": b["rounds"][-1]["ratio_ci95"],
            "miss": b["miss"], "within_5pct": abs(b["miss"]) <= 0.05,
            "second_measurement_ratio": second_ratio, "second_within_5pct": abs(second_ratio / args.ratio - 1) <= 0.05,
            "replans": len(b["rounds"]) - 1, "rounds": b["rounds"],
            # the table against whole models, free of drift: the units' raw sum against the dense model timed in
            # the same interleaved run, and the first plan's predicted ratio against its measured (paired) ratio
            "dense_prediction_error": b["table"]["anchor"]["error"],
            "first_plan_prediction_error": first["ratio_prediction_error"],
            # the same in absolute ms across the minutes between the table and the verification (drift included)
            "dense_prediction_error_absolute": first["dense_predicted_ms"] / first["dense_measured_ms"] - 1,
            "first_plan_prediction_error_absolute": first["predicted_ms"] / first["measured_ms"] - 1,
            "table_anchor": b["table"]["anchor"], "table_scale": b["table"]["scale"],
            # a whole model at the middle of every grid axis, timed in the table's run: its fraction of dense, priced
            "probe_fraction_error": b["table"]["probe"]["fraction_error"], "table_probe": b["table"]["probe"],
            "interpolation_checks": b["table"]["checks"],
            "macs_ratio": rep["macs"]["ratio"], "params_ratio": rep["params"]["ratio"],
            "shape": b["shape"], "gap": b["gap"],
            "retained_importance": b["retained_importance"], "total_importance": b["total_importance"],
            "rate_based": {"rate": rate["rate"], "retained_importance": rate["retained_importance"],
                           "measured_ms": rate["measured_ms"], "budget_plan_measured_ms": rate["budget_plan_measured_ms"],
                           "latency_ratio_rate_over_budget": rate["latency_ratio_rate_over_budget"],
                           "same_latency_within_3pct": abs(rate["latency_ratio_rate_over_budget"] - 1) <= 0.03,
                           "shape": rate["shape"]},
            "importance_ratio_budget_over_rate": b["retained_importance"] / rate["retained_importance"],
        })
    write_result("latency_budget", {"model": MODEL, "backend": "ort-cpu", "threads": args.threads,
                                    "importance": "magnitude", "rows": rows}, threads=args.threads)


if __name__ == "__main__":
    main()
