"""VTP accuracy on digits: train vit_digits (40 epochs), then `vtp-20` and `vtp-40` (sparsity training, global
threshold, fine-tuning), each through the same library calls as `vitdeploy train/compress`. Records every stage's
params, MACs and top-1, and the rate against the actual params/MACs reduction.
Targets (issue 3): vtp-20 within 1 point and vtp-40 within 2 points of dense top-1. Writes results/vtp_digits.json."""
import tempfile
from pathlib import Path

import torch

from vitdeploy.compression.pipeline import run_compress, run_train
from vitdeploy.compression.recipe import TrainCfg, load_recipe, locate_recipe
from vitdeploy.compression.train import seed_everything
from vitdeploy.models import load_model

from common import write_result

THREADS = 2
torch.set_num_threads(THREADS)

rows = []
with tempfile.TemporaryDirectory() as tmp:
    dense_dir = Path(tmp) / "dense"
    seed_everything(0)
    run_train(load_model("vit_digits"), "digits", TrainCfg(epochs=40, lr=2e-3, warmup_epochs=2), dense_dir)
    for name in ("vtp-20", "vtp-40"):
        recipe = load_recipe(name)
        seed_everything(recipe.seed)
        r = run_compress(load_model(str(dense_dir)), recipe, "digits", Path(tmp) / name, locate_recipe(name)[1])
        dense_top1 = r["stages"][0]["top1"]
        rows.append({
            "recipe": name, "stages": r["stages"], "reduction": r["reduction"],
            "equivalence_max_abs_diff": r["equivalence"]["max_abs_diff"],
            "top1_drop_points": round(100 * (dense_top1 - r["top1"]["after"]), 2),
            "kept": [{k: b[k] for k in ("block", "heads", "v_head_dim", "attn_in", "mlp_in", "mlp_hidden")} for b in r["kept"]],
        })

write_result("vtp_digits", {"model": "vit_digits", "data": "digits (1437 train / 360 val)", "rows": rows,
                            "targets": {"vtp-20": "drop <= 1 point", "vtp-40": "drop <= 2 points"}}, threads=THREADS)
