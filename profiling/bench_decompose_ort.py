"""Do SVD-factored layers keep their MACs savings on ONNX Runtime CPU? DeiT-S structure (random weights: only shapes
matter for speed) with a training-free plan: the magnitude VTP plan (four VTP sites, global threshold, aligned to 8),
then SVD of qkv, proj, fc1 and fc2 of every block at a quarter of their rank (ratio rule, multiples of 8; random
weights have a flat spectrum, so an energy rule would keep them dense). Variants: dense, VTP alone, VTP + SVD, and
SVD alone on the dense model. Each is exported by `vitdeploy export`'s code and checked against PyTorch, then all are
timed interleaved in one process (2 pinned threads, ORT spin-waiting off) at batch 8 and 1, with an ORT op profile
at batch 8 so any shortfall against the MACs ratio is explained by op type.
Target (issue 6): speedup of the SVD-factored model >= 0.9 x (dense MACs / its MACs) at batch 8; ONNX == PyTorch.
Writes results/decompose_ort.json."""
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from vitdeploy.runtime.onnxrt import ort_op_profile
from vitdeploy.compression.decompose import decompose_model, summarize
from vitdeploy.compression.plan import apply_plan
from vitdeploy.compression.recipe import DecomposeCfg, PruneCfg
from vitdeploy.compression.vtp import magnitude_plan
from vitdeploy.models import load_model

from common import export_variants, speed_rows, write_result

THREADS, ITERS = 2, 30
PRUNE = PruneCfg(rate=0.4, sites=["attn_in", "attn_out", "mlp_in", "mlp_hidden"], scope="global", alignment=8)
SVD = DecomposeCfg(enabled=True, method="svd", layers=["qkv", "proj", "fc1", "fc2"], rank_rule="ratio", ratio=0.25)
# the hybrid recipe's structure, training-free: SVD of qkv/proj at a third of their rank + magnitude MLP pruning at 35 %
HYBRID_PRUNE = PruneCfg(importance="magnitude", rate=0.35, sites=["mlp_in", "mlp_hidden"], scope="global", alignment=8)
SVD_ATTN = DecomposeCfg(enabled=True, method="svd", layers=["qkv", "proj"], rank_rule="ratio", ratio=0.33)
torch.set_num_threads(THREADS)


def factored(model: torch.nn.Module, cfg: DecomposeCfg = SVD) -> tuple[torch.nn.Module, dict]:
    model = copy.deepcopy(model)
    return model, summarize(decompose_model(model, cfg))


size = (3, 224, 224)
dense = load_model("deit_small_patch16_224").model.eval()
vtp = apply_plan(copy.deepcopy(dense), magnitude_plan(dense, PRUNE))
vtp_svd, vtp_svd_ranks = factored(vtp)
svd_only, svd_only_ranks = factored(dense)
vtp_svd_attn, vtp_svd_attn_ranks = factored(vtp, SVD_ATTN)
hybrid, hybrid_ranks = factored(apply_plan(copy.deepcopy(dense), magnitude_plan(dense, HYBRID_PRUNE)), SVD_ATTN)
models = {"dense": dense, "vtp40": vtp, "vtp40_svd": vtp_svd, "svd_only": svd_only, "vtp40_svd_attn": vtp_svd_attn,
          "hybrid": hybrid}
ranks = {"vtp40_svd": vtp_svd_ranks, "svd_only": svd_only_ranks, "vtp40_svd_attn": vtp_svd_attn_ranks,
         "hybrid": hybrid_ranks}
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    stats, paths = export_variants(models, Path(tmp), size, rng, parity_images=4)
    for name in ranks:
        stats[name]["factored"] = {k: v for k, v in ranks[name].items() if k != "ranks"}
    rows = speed_rows(paths, stats, size, rng, THREADS, ITERS)
    x8 = rng.standard_normal((8, *size), dtype=np.float32)
    breakdown = {}
    for k, p in paths.items():
        prof = ort_op_profile(p, "cpu", THREADS, x8, runs=5, top=20)
        ops = {r["op_type"]: round(r["ms"], 2) for r in prof["by_op_type"]}
        gemm = sum(v for op, v in ops.items() if op in ("MatMul", "FusedMatMul", "Gemm"))
        breakdown[k] = {"kernels_ms": round(prof["kernel_ms_per_run"], 1), "matmul_ms": round(gemm, 1),
                        "other_kernels_ms": round(prof["kernel_ms_per_run"] - gemm, 1), "ops_ms": ops}
    for k, b in breakdown.items():
        b["matmul_speedup"] = round(breakdown["dense"]["matmul_ms"] / b["matmul_ms"], 3)

b8 = rows[0]["variants"]
write_result("decompose_ort", {
    "model": "deit_small_patch16_224 (random weights)", "plan": {"importance": "magnitude", "rate": PRUNE.rate,
                                                                 "sites": PRUNE.sites, "scope": PRUNE.scope},
    "decompose": {"method": SVD.method, "layers": SVD.layers, "rank_rule": SVD.rank_rule, "ratio": SVD.ratio,
                  "alignment": SVD.alignment},
    "threads": THREADS, "iters": ITERS, "variants": stats, "rows": rows, "kernel_breakdown_batch8": breakdown,
    "variant_configs": {"vtp40_svd": "VTP-40 plan + SVD of qkv/proj/fc1/fc2 at ratio 0.25",
                        "svd_only": "SVD of qkv/proj/fc1/fc2 at ratio 0.25 on the dense model",
                        "vtp40_svd_attn": "VTP-40 plan + SVD of qkv/proj at ratio 0.33",
                        "hybrid": "magnitude MLP plan (mlp_in, mlp_hidden) at 0.35 + SVD of qkv/proj at ratio 0.33"},
    "target": {"what": "speedup >= 0.9 x MACs ratio at batch 8, ONNX == PyTorch (per factored variant)",
               **{k: {"speedup_over_macs_ratio": b8[k]["speedup_over_macs_ratio"],
                      "met": b8[k]["speedup_over_macs_ratio"] >= 0.9 and stats[k]["parity_max_abs_diff"] < 1e-3}
                  for k in ranks}},
}, threads=THREADS)
