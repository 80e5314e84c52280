"""What does VTP's sparsity phase cost per training step against plain training of the same model? Times one
epoch of the library's own `fit()` (forward, backward, AdamW step, progress bar) with and without the gates and
the L1 term, interleaved, on the same data, 2 pinned threads. Models: vit_digits on digits (32x32, batch 64) and
the DeiT-Ti structure at 224x224 (batch 16, 8 steps per epoch).
Target (issue 3): <= 15 % more time per step. Writes results/vtp_sparsity_overhead.json."""
import copy
import time

import numpy as np
import torch

from vitdeploy.compression.gates import VTP_SITES, attach_gates
from vitdeploy.compression.recipe import SparsityCfg, TrainCfg
from vitdeploy.compression.train import fit
from vitdeploy.data import calibration_subset, digits_data_config, load_dataset, make_loader
from vitdeploy.models import load_model

from common import write_result

THREADS, REPS = 2, 5
torch.set_num_threads(THREADS)


def epoch_seconds(model: torch.nn.Module, loader, gated: bool) -> float:
    m = copy.deepcopy(model)
    if gated:
        gates = attach_gates(m, list(VTP_SITES))
        cfg = SparsityCfg(epochs=1, l1=1e-4, score_lr=1e-2)
    else:
        gates, cfg = None, TrainCfg(epochs=1)
    t = time.perf_counter()
    fit(m, loader, None, cfg, desc="gated" if gated else "plain", gates=gates)
    return time.perf_counter() - t


rows = []
for name, batch, n_images in (("vit_digits", 64, 1437), ("deit_tiny_patch16_224", 16, 128)):
    torch.manual_seed(0)
    model = load_model(name).model
    model.reset_classifier(10)
    size = tuple(load_model(name).input_size)
    ds = load_dataset("digits", "train", digits_data_config(size))
    loader = make_loader(calibration_subset(ds, n_images), batch, shuffle=True, seed=0, drop_last=True)
    epoch_seconds(model, loader, False)  # warm-up: allocator, thread pools
    times = {"plain": [], "sparsity": []}
    for _ in range(REPS):
        times["plain"].append(epoch_seconds(model, loader, False))
        times["sparsity"].append(epoch_seconds(model, loader, True))
    med = {k: float(np.median(v)) for k, v in times.items()}
    steps = len(loader)
    rows.append({"model": name, "batch": batch, "steps_per_epoch": steps,
                 "ms_per_step": {k: round(1e3 * v / steps, 2) for k, v in med.items()},
                 "overhead": round(med["sparsity"] / med["plain"] - 1, 4)})

write_result("vtp_sparsity_overhead", {"threads": THREADS, "reps": REPS, "sites": list(VTP_SITES), "rows": rows,
                                       "target": "overhead <= 0.15"}, threads=THREADS)
