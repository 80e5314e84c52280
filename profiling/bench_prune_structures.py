"""Which pruned structure runs fastest per MAC? DeiT-S on ONNX Runtime CPU (random weights: only shapes matter for
speed) at a 1.85x MACs cut: vitdeploy's four-site plan (index-selected qkv/fc1 inputs), the residual-width plans
(`embed` with q/k, v and MLP hidden dims; by dims, by MACs cost, uniform), and Torch-Pruning's documented ViT recipe
(residual width pruned with everything else) and its bottleneck variant (internal widths only), all at the same
MACs (each one's rate or ratio bisected to the target), and the default plan with widths in multiples of 16. Every
model goes through vitdeploy's exporter and its graph cleanup (what `vitdeploy export` ships), so only the structure
differs; the graphs are timed round-robin in one process with pinned threads, and each speedup over dense is paired
per round with a bootstrap interval. Timed twice: with spin-waiting off (vitdeploy's interleaving default) and with
ORT's default session (idle threads spin between ops; a pause between graphs lets the last one's threads park).
ORT op profiles at batch 8 and 1, taken round-robin across the graphs so they compare, say where the time goes.
Targets (residual-width issue): speedup ÷ MACs ratio >= 0.97 at batch 8 and >= 0.93 at batch 1; the default plan
at least as fast as the faster peer structure. Writes results/prune_structures.json.

    python profiling/bench_prune_structures.py [--rounds 20] [--threads 2] [--cut 1.85] [--no-peer]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import peer
from common import export_variants, interleaved_op_profile, paired_speed_rows, write_result
from vitdeploy.compression.recipe import load_recipe
from vitdeploy.compression.study import prune_at, rate_for
from vitdeploy.compression.vtp import magnitude_scores
from vitdeploy.models import count_macs, load_model

MODEL, SIZE = "deit_small_patch16_224", (3, 224, 224)
EMBED = ["embed", "attn_qk", "attn_out", "mlp_hidden"]
PLANS = {  # name: (sites, scope, cost, alignment)
    "four_site": (["attn_in", "attn_out", "mlp_in", "mlp_hidden"], "global", "dims", 8),
    "embed_global": (EMBED, "global", "dims", 8),
    "embed_global_a16": (EMBED, "global", "dims", 16),
    "embed_per_mac": (EMBED, "global", "macs", 8),
    "embed_uniform": (EMBED, "uniform", "dims", 8),
}


def ours_at_macs(dense, sites, scope, cost, target, alignment=8):
    """vitdeploy's magnitude plan for these sites at the rate whose MACs come closest to `target`."""
    r = load_recipe("vtp-40", ["prune.importance=magnitude", f"prune.sites=[{','.join(sites)}]", f"prune.scope={scope}",
                               f"prune.cost={cost}", f"prune.alignment={alignment}"])
    scores = magnitude_scores(dense, sites)
    rate = rate_for(dense, scores, r, target, lambda m: count_macs(m, SIZE), fold=False)
    return prune_at(dense, scores, r, rate, fold=False), rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cut", type=float, default=1.85, help="dense MACs / pruned MACs")
    ap.add_argument("--no-peer", action="store_true", help="leave Torch-Pruning out")
    args = ap.parse_args()
    t0 = time.perf_counter()
    dense = load_model(MODEL).model.eval()
    target = int(count_macs(dense, SIZE) / args.cut)
    models, settings = {"dense": dense}, {}
    for name, (sites, scope, cost, alignment) in PLANS.items():
        models[name], rate = ours_at_macs(dense, sites, scope, cost, target, alignment)
        settings[name] = {"sites": sites, "scope": scope, "cost": cost, "alignment": alignment, "rate": rate,
                          "importance": "magnitude"}
    if not args.no_peer:
        peer.require()
        for name, bottleneck in (("peer_uniform", False), ("peer_bottleneck", True)):
            models[name], ratio = peer.at_macs(dense, target, SIZE, bottleneck=bottleneck)
            settings[name] = {"package": "torch-pruning " + peer.version(), "ratio": ratio, "bottleneck": bottleneck,
                              "round_to": 8, "importance": "l2 magnitude"}
    for name, m in models.items():
        if name != "dense":
            settings[name]["embed_dim"] = int(m.patch_embed.proj.out_channels)  # the peer leaves m.embed_dim stale
            settings[name]["first_block"] = {"qkv": list(m.blocks[0].attn.qkv.weight.shape),
                                             "fc1": list(m.blocks[0].mlp.fc1.weight.shape)}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        stats, paths = export_variants(models, Path(tmp), SIZE, rng, clean=True)
        rows = [*paired_speed_rows(paths, stats, SIZE, rng, args.threads, args.rounds),
                *paired_speed_rows(paths, stats, SIZE, rng, args.threads, args.rounds, spin=True)]
        ops = {b: interleaved_op_profile(paths, args.threads, rng.standard_normal((b, *SIZE), dtype=np.float32),
                                         rounds=r) for b, r in ((8, 5), (1, 30))}
    for k in stats:
        if k != "dense":
            stats[k]["macs_vs_target"] = round(stats[k]["macs"] / target - 1, 4)
    write_result("prune_structures", {
        "model": f"{MODEL} (random weights)", "macs_cut": args.cut, "target_macs": target, "threads": args.threads,
        "settings": settings, "graphs": stats, "graphs_cleaned": True, "rows": rows,
        "op_ms_batch8": ops[8], "op_ms_batch1": ops[1],
        "targets": {"batch8_speedup_over_macs_ratio": 0.97, "batch1_speedup_over_macs_ratio": 0.93},
        "wall_s": round(time.perf_counter() - t0, 1),
    }, threads=args.threads)


if __name__ == "__main__":
    main()
