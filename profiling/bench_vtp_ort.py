"""Does ONNX Runtime CPU speed follow MACs for VTP plans? DeiT-S structure (random weights: only shapes matter for
speed), dense vs VTP-40 plans from the training-free magnitude importance (aligned to 8): the four VTP sites with a
global threshold, the same with a uniform rate, without the input-dim sites (no index-selects), and the MLP hidden
dims alone. All exported by `vitdeploy export`'s
code, timed interleaved in one process with 2 pinned threads at batch 8 and 1, then an ORT op profile per variant so
any shortfall against the MACs ratio is explained by op type (Gather for index-selects, MatMul, Softmax...).
Target (issue 3): speedup >= 0.9 x (dense MACs / pruned MACs) at batch 8. Writes results/vtp_ort.json."""
import copy
import tempfile
from pathlib import Path

import numpy as np

from vitdeploy.runtime.onnxrt import ort_op_profile
from vitdeploy.compression.plan import apply_plan
from vitdeploy.compression.recipe import PruneCfg
from vitdeploy.compression.vtp import magnitude_plan
from vitdeploy.models import load_model

from common import export_variants, speed_rows, write_result

THREADS, ITERS, RATE = 2, 30, 0.4
VTP4 = ["attn_in", "attn_out", "mlp_in", "mlp_hidden"]
PLANS = {
    "vtp40_global": PruneCfg(rate=RATE, sites=VTP4, scope="global", alignment=8),
    "vtp40_uniform": PruneCfg(rate=RATE, sites=VTP4, scope="uniform", alignment=8),
    "vtp40_no_input_dims": PruneCfg(rate=RATE, sites=["attn_out", "mlp_hidden"], scope="uniform", alignment=8),
    "mlp_hidden_only": PruneCfg(rate=RATE, sites=["mlp_hidden"], scope="uniform", alignment=8),
}


dense = load_model("deit_small_patch16_224").model.eval()
size = (3, 224, 224)
models = {"dense": dense} | {k: apply_plan(copy.deepcopy(dense), magnitude_plan(dense, cfg)) for k, cfg in PLANS.items()}
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    stats, paths = export_variants(models, Path(tmp), size, rng)
    rows = speed_rows(paths, stats, size, rng, THREADS, ITERS)
    x8 = rng.standard_normal((8, *size), dtype=np.float32)
    ops, breakdown = {}, {}
    for k, p in paths.items():
        prof = ort_op_profile(p, "cpu", THREADS, x8, runs=10, top=20)
        ops[k] = {r["op_type"]: round(r["ms"], 2) for r in prof["by_op_type"]}
        gemm = sum(v for op, v in ops[k].items() if op in ("MatMul", "FusedMatMul", "Gemm"))
        breakdown[k] = {"kernels_ms": round(prof["kernel_ms_per_run"], 1), "matmul_ms": round(gemm, 1),
                        "gather_ms": ops[k].get("Gather", 0.0),
                        "other_kernels_ms": round(prof["kernel_ms_per_run"] - gemm - ops[k].get("Gather", 0.0), 1)}
    for k, b in breakdown.items():  # what shrinks with MACs (matmuls) and what does not (everything else)
        b["matmul_speedup"] = round(breakdown["dense"]["matmul_ms"] / b["matmul_ms"], 3)
        b["other_kernels_speedup"] = round(breakdown["dense"]["other_kernels_ms"] / b["other_kernels_ms"], 3)

write_result("vtp_ort", {
    "model": "deit_small_patch16_224 (random weights)", "rate": RATE, "alignment": 8, "importance": "magnitude",
    "plans": {k: {"sites": cfg.sites, "scope": cfg.scope} for k, cfg in PLANS.items()},
    "threads": THREADS, "iters": ITERS, "variants": stats, "rows": rows, "op_ms_batch8": ops, "kernel_breakdown_batch8": breakdown,
}, threads=THREADS)
