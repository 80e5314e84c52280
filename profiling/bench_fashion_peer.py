"""A peer baseline on Fashion-MNIST: Torch-Pruning's magnitude pruner against vitdeploy's vtp-40, at the same MACs,
after the same fine-tune, with ONNX Runtime CPU speed side by side (issue 13).

The peer is used as its users use it on a timm ViT (profiling/peer.py): `MetaPruner` with L2 magnitude importance,
the classifier ignored, the attention heads declared (`num_heads`, head dims pruned, kept heads), one pruning ratio
for every layer, its default channel rounding; afterwards each attention's head_dim/attn_dim is updated and the
original softmax scale kept (fused attention off, so the scale is the stored one). The ratio is searched so that its MACs come closest to vtp-40's
(rate 0.4) without exceeding them. Both models get the same distilled fine-tune per seed (the VTP side is
bench_fashion_vtp's, from the shared cache), and both are scored on the 10,000 test images, paired per image.
Speed: vitdeploy's exporter writes each model's FP32 graph; the sessions are timed interleaved with pinned threads.

Torch-Pruning is a benchmark-only dependency: `pip install -e '.[bench]'`; the package never imports it.
Writes results/fashion_peer.json.

    python profiling/bench_fashion_peer.py [--seeds 0,1] [--threads 2] [--iters 200]
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np

from vitdeploy.compression.study import prune_at
import fashion as F
import peer
from common import export_variants, speed_rows, write_result

RECIPE = "vtp-40"


def main() -> None:
    peer.require()
    run = F.start(__doc__.splitlines()[0], RECIPE, extra_args=[("--iters", {"type": int, "default": 200})])
    args, seeds, cache, tests, dense, t0 = run.args, run.seeds, run.cache, run.tests, run.dense, run.t0
    size = tuple(tests.loader.dataset[0][0].shape)
    sides: dict[str, list] = {"vtp_pruned": [], "vtp_finetuned": [], "peer_pruned": [], "peer_finetuned": []}
    models = {}
    for seed in seeds:
        r = F.recipe(RECIPE, seed)
        ctx = F.context(r)
        base, scores = cache.vtp_scores(ctx, r, "vtp")
        rate = r.prune.rate
        vtp = prune_at(base, scores, r, rate)
        sides["vtp_pruned"].append(F.side(cache, f"vtp-{rate}-pruned-seed{seed}", tests, lambda: vtp, rate=rate))
        sides["vtp_finetuned"].append(F.side(cache, f"vtp-{rate}-finetuned-seed{seed}", tests,
                                             lambda: F.finetune(ctx, copy.deepcopy(vtp), f"fine-tune vtp s{seed}"),
                                             rate=rate))
        theirs, ratio = peer.at_macs(ctx.dense, sides["vtp_pruned"][-1]["macs"], size, at_most=True, round_to=None)
        sides["peer_pruned"].append(F.side(cache, f"peer-{ratio}-pruned", tests, lambda: theirs, ratio=ratio))
        sides["peer_finetuned"].append(F.side(cache, f"peer-{ratio}-finetuned-seed{seed}", tests,
                                              lambda: F.finetune(ctx, copy.deepcopy(theirs), f"fine-tune peer s{seed}"),
                                              ratio=ratio))
        models = {"dense": ctx.dense.cpu().eval(), "vtp-40": vtp.cpu().eval(), "peer": theirs}

    def corr(n):
        return [x["correct"] for x in sides[n]]

    comparisons = {"before_finetune": F.across_seeds(corr("vtp_pruned"), corr("peer_pruned")),
                   "after_finetune": F.across_seeds(corr("vtp_finetuned"), corr("peer_finetuned"))}
    with tempfile.TemporaryDirectory() as tmp:  # speed does not depend on the weights: the last seed's models
        rng = np.random.default_rng(0)
        stats, paths = export_variants(models, Path(tmp), size, rng)
        speed = speed_rows(paths, stats, size, rng, args.threads, args.iters)
    write_result("fashion_peer", {
        "comparison": "Torch-Pruning magnitude pruner vs vtp-40 at the same MACs, same fine-tune; ORT CPU speed",
        "peer": {"package": "torch-pruning", "version": peer.version(),
                 "pruner": "MetaPruner, GroupMagnitudeImportance(p=2), one ratio for every layer, head dims pruned, "
                           "classifier ignored"},
        "data": f"{F.DATA} test (10,000 images)", "dense_model": str(F.DENSE.relative_to(F.ROOT)), "recipe": RECIPE,
        "schedule": F.SCHEDULE, "schedule_text": F.schedule_text(F.SCHEDULE), "seeds": seeds,
        "dense": F.record(dense),
        "sides": {n: [F.record(x) | {"seed": s} for s, x in zip(seeds, v)] for n, v in sides.items()},
        "mean_over_seeds": {n: F.mean_top1(v) for n, v in sides.items()},
        "vtp_minus_peer": comparisons,
        "verdicts": {k: F.verdict(v, "vtp-40", "the peer") for k, v in comparisons.items()},
        "graphs": stats, "speed_ort_cpu": speed, "wall_s": F.elapsed(t0),
    }, threads=args.threads)


if __name__ == "__main__":
    main()
