"""Does ONNX Runtime CPU speed follow MACs when MLP hidden dims are pruned? DeiT-S structure (random weights: only
shapes matter for speed), dense vs the mlp-magnitude plan at rate 0.4, both exported by `vitdeploy export`'s code,
timed interleaved in one process with pinned threads at batch 1 and 8. Writes results/ort_mlp_pruning.json."""
import copy
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vitdeploy.compress.vtp import magnitude_plan
from vitdeploy.compress.plan import apply_plan
from vitdeploy.compress.recipe import PruneCfg
from vitdeploy.deploy.onnx_export import export_onnx, parity
from vitdeploy.models import count_macs, count_params, load_model

from common import gemm_roofline_gflops, interleaved_p50, write_result

THREADS, ITERS, RATE = 2, 30, 0.4

dense = load_model("deit_small_patch16_224").model.eval()
pruned = apply_plan(copy.deepcopy(dense), magnitude_plan(dense, PruneCfg(rate=RATE, alignment=8, sites=["mlp_hidden"], scope="uniform")))
size = (3, 224, 224)
rng = np.random.default_rng(0)
sessions, stats = {}, {}
with tempfile.TemporaryDirectory() as tmp:
    for name, model in (("dense", dense), ("mlp_pruned", pruned)):
        path = export_onnx(model, Path(tmp) / f"{name}.onnx", size)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
        sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        stats[name] = {"params": count_params(model), "macs": count_macs(model, size),
                       "parity_max_abs_diff": parity(model, path, rng.standard_normal((4, *size), dtype=np.float32))["max_abs_diff"]}

    rows = []
    for batch in (1, 8):
        x = rng.standard_normal((batch, *size), dtype=np.float32)
        p50 = interleaved_p50({k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()}, ITERS)
        macs_ratio = stats["dense"]["macs"] / stats["mlp_pruned"]["macs"]
        speedup = p50["dense"] / p50["mlp_pruned"]
        gflops = {k: 2 * stats[k]["macs"] * batch / (p50[k] / 1e3) / 1e9 for k in p50}
        rows.append({"batch": batch, "p50_ms": p50, "speedup": round(speedup, 3), "macs_ratio": round(macs_ratio, 3),
                     "speedup_over_macs_ratio": round(speedup / macs_ratio, 3), "achieved_gflops": gflops})

roof = gemm_roofline_gflops(THREADS)
write_result("ort_mlp_pruning", {
    "model": "deit_small_patch16_224 (random weights)", "plan": f"mlp-magnitude rate {RATE}, alignment 8",
    "threads": THREADS, "iters": ITERS, "variants": stats, "rows": rows, "gemm_roofline_gflops": round(roof, 1),
}, threads=THREADS)
