"""Does ONNX Runtime CPU speed follow MACs for MCF-shaped plans, and what do the fc1 input selects cost?
DeiT-S structure (timm deit_small_patch16_224, random weights: only shapes matter for speed). The plan comes from
MCF's own code (FIS importance on seeded random images, the back-to-front schedule without recovery): fc1 keeps
2/3 of its input dims and half of its hidden dims, aligned to 8, in three variants with the same MACs:
  mcf_uniform    X-Transformation: one input set for every FFN, the residual permuted so each select is a Slice
  mcf_per_layer  each FFN its own input dims, gathered in aligned runs of 8 (Reshape -> Gather -> Reshape)
  mcf_per_layer_elementwise  the same dims gathered one element at a time (a plain Gather on the last axis)
and mcf_hidden_only (the same hidden dims, no input cut) for reference. Exported by `vitdeploy export`'s code, timed
interleaved in one process with 2 pinned threads and spin-waiting off at batch 8 and 1, then an ORT op profile per
variant: the Gather/Slice time above the dense graph's is the cost of the input selects.
Target (issue 7): mcf_uniform speedup >= 0.9 x (dense MACs / MCF MACs) at batch 8. Writes results/mcf_ort.json."""
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from vitdeploy.runtime.onnxrt import ort_op_profile
from vitdeploy.compression.mcf import back_to_front, fis_scorer
from vitdeploy.compression.recipe import McfCfg, PruneCfg
from vitdeploy.models import load_model
from vitdeploy.models.surgery import IndexSelect

from common import export_variants, speed_rows, write_result

THREADS, ITERS, CALIB = 2, 30, 16
torch.set_num_threads(THREADS)
PRUNE = PruneCfg(rate=0.5, sites=["mlp_in", "mlp_hidden"], scope="uniform", alignment=8)


def mcf(model: torch.nn.Module, cfg: McfCfg, prune: PruneCfg = PRUNE) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(8, *size, generator=g) for _ in range(CALIB // 8)]
    return back_to_front(model, fis_scorer(lambda: images, cfg), prune, cfg, sample=images[0][:2],
                         measure=lambda m: (0, 0, None), recover=lambda m, b: None)[0]


def elementwise(model: torch.nn.Module) -> torch.nn.Module:
    """The same kept input dims, selected element by element (the aligned-run shortcut switched off)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, IndexSelect):
            m.group, m.start = 0, -1
    return model


dense = load_model("deit_small_patch16_224").model.eval()
size = (3, 224, 224)
models = {"dense": dense,
          "mcf_uniform": mcf(dense, McfCfg(in_rate=1 / 3, input_rule="uniform")),
          "mcf_per_layer": mcf(dense, McfCfg(in_rate=1 / 3, input_rule="per_layer"))}
models["mcf_per_layer_elementwise"] = elementwise(models["mcf_per_layer"])
models["mcf_hidden_only"] = mcf(dense, McfCfg(), PruneCfg(rate=0.5, sites=["mlp_hidden"], scope="uniform", alignment=8))
kept = {k: [(b.mlp.fc1.in_features, b.mlp.fc1.out_features) for b in m.blocks] for k, m in models.items()}
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    stats, paths = export_variants(models, Path(tmp), size, rng)
    rows = speed_rows(paths, stats, size, rng, THREADS, ITERS)
    for row in rows:
        row["uniform_over_per_layer"] = round(row["p50_ms"]["mcf_per_layer"] / row["p50_ms"]["mcf_uniform"], 3)
    x8 = rng.standard_normal((8, *size), dtype=np.float32)
    ops, selects = {}, {}
    for k, p in paths.items():
        prof = ort_op_profile(p, "cpu", THREADS, x8, runs=10, top=25)
        ops[k] = {r["op_type"]: round(r["ms"], 3) for r in prof["by_op_type"]}
        ops[k]["_kernels_total"] = round(prof["kernel_ms_per_run"], 2)
    for k in models:  # Gather/Slice/Reshape above the dense graph's own (token slicing, shape ops) = the input selects
        extra = {op: round(ops[k].get(op, 0.0) - ops["dense"].get(op, 0.0), 3) for op in ("Gather", "Slice", "Reshape")}
        selects[k] = extra | {"select_ms": round(sum(extra.values()), 3),
                              "share_of_kernels": round(sum(extra.values()) / ops[k]["_kernels_total"], 4)}

write_result("mcf_ort", {
    "model": "deit_small_patch16_224 (random weights)", "calibration": f"{CALIB} seeded random images (structure only)",
    "plan": {"mlp_in_rate": 1 / 3, "mlp_hidden_rate": 0.5, "alignment": 8, "scope": "uniform"},
    "kept_in_hidden_per_block": kept, "threads": THREADS, "iters": ITERS, "variants": stats, "rows": rows,
    "op_ms_batch8": ops, "input_select_cost_batch8": selects,
    "target": "mcf_uniform speedup >= 0.9 x MACs ratio at batch 8",
}, threads=THREADS)
