"""Which structure and which importance keep the most accuracy at equal MACs? vit_fashion on the 10,000 Fashion-MNIST
test images, every side at the same MACs (a 1.85x cut, each side's rate or ratio bisected to it), one-shot (and at a
3x cut, where the plans part), and the candidates for the default plan and the peer's two structures after the same
distilled fine-tune; two seeds, paired per image (residual-width issue).

Sides: vitdeploy's four-site plan (qkv/fc1 input dims, v dims, MLP hidden) with magnitude, taylor and VTP's learned
importance; the residual-width plan (`embed` with q/k, v and hidden dims) with magnitude, learned, taylor, and taylor
ranked per MAC (`prune.cost: macs`); the same per-MAC taylor plan without `embed`; Torch-Pruning's documented ViT recipe
(uniform ratio, residual width pruned, L2 magnitude or first-order Taylor) and its bottleneck variant (Taylor).
Its widths are not rounded here (round_to=None, its default), so that its one ratio can reach the MACs target on a
96-wide model (rounded to 8, the uniform cut jumps from 72 to 64 dims, 8 % under the target); the speed benchmark
rounds them to 8. The peer keeps vit_fashion's convolutional stem (its inner convs ignored), as vitdeploy does: left to its one ratio
for every layer it also narrows the stem, and one-shot top-1 falls to 45 % (L2) and 18 % (Taylor) at this cut, a
measure of the stem rather than of the transformer's structure.
Taylor saliencies (both tools) come from the same 1,024 train images per seed; learned scores are VTP's sparsity
phase, shared with bench_fashion_vtp through the cache. The schedule is profiling/fashion.py's shortened one, the
same for every side. Writes results/fashion_structures.json and .png.

    python profiling/bench_fashion_structures.py [--seeds 0,1] [--threads 2] [--cut 1.85]
"""
from __future__ import annotations

import copy

import fashion as F
import peer
from vitdeploy.compression.study import prune_at, rate_for
from vitdeploy.compression.vtp import magnitude_scores, taylor_batches, taylor_scores
from vitdeploy.models import count_macs

RECIPE = "vtp-40"
FOUR = ["attn_in", "attn_out", "mlp_in", "mlp_hidden"]
EMBED = ["embed", "attn_qk", "attn_out", "mlp_hidden"]
OURS = {  # name: (sites, importance, cost)
    "four_site_magnitude": (FOUR, "magnitude", "dims"),
    "four_site_taylor": (FOUR, "taylor", "dims"),
    "four_site_learned": (FOUR, "learned", "dims"),
    "embed_magnitude": (EMBED, "magnitude", "dims"),
    "embed_learned": (EMBED, "learned", "dims"),
    "embed_taylor": (EMBED, "taylor", "dims"),
    "embed_taylor_per_mac": (EMBED, "taylor", "macs"),
    "no_embed_taylor_per_mac": (["attn_qk", "attn_out", "mlp_hidden"], "taylor", "macs"),
    # the default plan with widths in multiples of 16 instead of 8 (the speed benchmark's batch-1 finding)
    "embed_learned_a16": (EMBED, "learned", "dims", ["prune.alignment=16"]),
}
PEERS = {  # name: (bottleneck, importance)
    "peer_uniform_l2": (False, "l2"),
    "peer_uniform_taylor": (False, "taylor"),
    "peer_bottleneck_taylor": (True, "taylor"),
}
CURVE_SERIES = ("four_site_magnitude", "four_site_learned", "embed_learned", "embed_taylor", "embed_taylor_per_mac",
                "peer_uniform_l2", "peer_uniform_taylor", "peer_bottleneck_taylor")
CURVE_PAIRS = [("embed_taylor_per_mac", "four_site_magnitude"), ("embed_taylor", "four_site_magnitude"),
               ("embed_taylor_per_mac", "peer_uniform_taylor"), ("embed_taylor", "peer_uniform_taylor"),
               ("embed_learned", "peer_uniform_taylor"), ("four_site_learned", "peer_uniform_taylor"),
               ("embed_learned", "four_site_learned"), ("embed_learned", "peer_bottleneck_taylor")]
# fine-tuned as well as one-shot (the others one-shot only: each fine-tune costs ~2 minutes per seed here)
FINETUNED = ("four_site_learned", "embed_learned", "embed_learned_a16", "peer_uniform_taylor",
             "peer_bottleneck_taylor")
PAIRS = [("embed_taylor_per_mac", "four_site_magnitude"), ("embed_taylor", "four_site_magnitude"),
         ("embed_magnitude", "four_site_magnitude"), ("four_site_taylor", "four_site_magnitude"),
         ("embed_taylor_per_mac", "no_embed_taylor_per_mac"), ("embed_taylor_per_mac", "four_site_learned"),
         ("embed_taylor_per_mac", "peer_uniform_taylor"), ("embed_taylor_per_mac", "peer_uniform_l2"),
         ("embed_taylor_per_mac", "peer_bottleneck_taylor"), ("four_site_learned", "peer_uniform_taylor"),
         ("embed_learned", "four_site_learned"), ("embed_learned", "peer_uniform_taylor"),
         ("embed_taylor", "peer_uniform_taylor"), ("embed_learned", "peer_bottleneck_taylor"),
         ("embed_learned_a16", "embed_learned"), ("embed_learned_a16", "peer_uniform_taylor"),
         ("embed_learned_a16", "peer_bottleneck_taylor")]


def key(name: str) -> str:
    """Cache key of a side (the peers keep the convolutional stem: see the module docstring)."""
    return f"{name}-keepstem-r1" if name in PEERS else name


def ours(cache, ctx, seed, name, target, size, calib):
    """vitdeploy's plan for one side at the rate whose MACs come closest to the target."""
    sites, importance, cost, *more = OURS[name]
    r = F.recipe(RECIPE, seed, extra=[f"prune.sites=[{','.join(sites)}]", f"prune.importance={importance}",
                                      f"prune.cost={cost}", *(more[0] if more else [])])
    if importance == "learned":
        base, scores = cache.vtp_scores(ctx, r, "vtp")  # the four-site phase is bench_fashion_vtp's
    elif importance == "taylor":
        base = ctx.dense
        scores = cache.get(f"taylor-{'-'.join(sites)}-seed{seed}", lambda: taylor_scores(base, sites, calib))
    else:
        base, scores = ctx.dense, magnitude_scores(ctx.dense, sites)
    fold = importance == "learned"
    rate = rate_for(base, scores, r, target, lambda m: count_macs(m, size), fold=fold)
    model = prune_at(base, scores, r, rate, fold=fold)
    return model, {"rate": rate, "embed_dim": int(model.embed_dim)}


def main() -> None:
    peer.require()
    run = F.start(__doc__.splitlines()[0], RECIPE, extra_args=[
        ("--cut", {"type": float, "default": 1.85}),
        ("--curve", {"default": "3", "help": "further MACs cuts, one-shot only, comma-separated (empty: none)"})])
    args, seeds, cache, tests, dense, t0 = run.args, run.seeds, run.cache, run.tests, run.dense, run.t0
    size = tuple(tests.loader.dataset[0][0].shape)
    target = int(dense["macs"] / args.cut)
    names = [*OURS, *PEERS]
    sides = {f"{n}_pruned": [] for n in names} | {f"{n}_finetuned": [] for n in FINETUNED}
    makers = {}
    for seed in seeds:  # every one-shot side first (minutes), then the fine-tunes (about two minutes each)
        ctx = F.context(F.recipe(RECIPE, seed))
        calib = list(taylor_batches(ctx))
        for name in names:
            def make(name=name, ctx=ctx, calib=calib, seed=seed, target=target):
                if name in OURS:
                    return ours(cache, ctx, seed, name, target, size, calib)
                bottleneck, importance = PEERS[name]
                model, ratio = peer.at_macs(ctx.dense, target, size, bottleneck=bottleneck, importance=importance,
                                            batches=calib, keep_stem=True, round_to=None)
                return model, {"ratio": ratio, "embed_dim": int(model.blocks[0].attn.qkv.in_features)}
            makers[(seed, name)] = make
            sides[f"{name}_pruned"].append(F.side(cache, f"structures-{args.cut}-{key(name)}-seed{seed}-pruned", tests, make))
            print(f"seed {seed} {name}: one-shot {sides[f'{name}_pruned'][-1]['correct'].mean():.4f}", flush=True)
    cuts = [float(c) for c in args.curve.split(",") if c.strip()]
    curve = {cut: {n: [] for n in names} for cut in cuts}
    for cut in cuts:  # where one-shot pruning starts to hurt: the importance and the structure alone
        for seed in seeds:
            for name in names:
                make = makers[(seed, name)]
                curve[cut][name].append(F.side(cache, f"structures-{cut}-{key(name)}-seed{seed}-pruned", tests,
                                               lambda make=make, cut=cut: make(target=int(dense["macs"] / cut))))
                print(f"cut {cut} seed {seed} {name}: one-shot {curve[cut][name][-1]['correct'].mean():.4f}", flush=True)
    for seed in seeds:
        for name in FINETUNED:
            def tuned(make=makers[(seed, name)], name=name, seed=seed):
                return F.finetune(F.context(F.recipe(RECIPE, seed)), copy.deepcopy(make()[0]), f"fine-tune {name} s{seed}")
            sides[f"{name}_finetuned"].append(F.side(cache, f"structures-{args.cut}-{key(name)}-seed{seed}-finetuned", tests,
                                                     tuned))
            print(f"seed {seed} {name}: fine-tuned {sides[f'{name}_finetuned'][-1]['correct'].mean():.4f}", flush=True)

    def corr(n):
        return [x["correct"] for x in sides[n]]

    comparisons, verdicts = {}, {}
    for a, b in PAIRS:
        for stage in ("pruned", "finetuned"):
            if f"{a}_{stage}" not in sides or f"{b}_{stage}" not in sides:
                continue
            k = f"{a}_minus_{b}_{stage}"
            comparisons[k] = F.across_seeds(corr(f"{a}_{stage}"), corr(f"{b}_{stage}"))
            verdicts[k] = F.verdict(comparisons[k], a, b)
    means = {n: F.mean_top1(v) for n, v in sides.items()}
    rows = [{"label": "dense", "stage": "dense", "macs": dense["macs"], **F.mean_top1([dense])}]
    for i, n in enumerate(names):
        for stage, label in (("pruned", "one-shot"), ("finetuned", "after fine-tune")):
            if f"{n}_{stage}" not in sides:
                continue
            rows.append({"label": n, "stage": label, "macs": sides[f"{n}_{stage}"][0]["macs"], "color": i,
                         **means[f"{n}_{stage}"]})
    curve_rows = []
    for cut in [args.cut, *cuts]:
        at = {n: sides[f"{n}_pruned"] for n in names} if cut == args.cut else curve[cut]
        row = {"macs_cut": cut, "macs": int(dense["macs"] / cut), "sides": {n: F.mean_top1(v) for n, v in at.items()},
               "macs_vs_target": {n: round(max(abs(x["macs"] * cut / dense["macs"] - 1) for x in v), 4)
                                  for n, v in at.items()}}
        row["differences"] = {f"{a}_minus_{b}": F.across_seeds([x["correct"] for x in at[a]],
                                                               [x["correct"] for x in at[b]])
                              for a, b in CURVE_PAIRS}
        curve_rows.append(row)
    curve_plot = F.plot_curve([{"macs": r["macs"], **r["sides"]} for r in curve_rows],
                              {n: n.replace("_", " ") for n in CURVE_SERIES},
                              F.ROOT / "profiling/results/fashion_structures_curve.png",
                              "vit_fashion one-shot (no fine-tune) against the MACs cut, mean of 2 seeds")
    plot = F.plot_sides(rows, F.ROOT / "profiling/results/fashion_structures.png",
                        f"vit_fashion at a {args.cut}x MACs cut: structure and importance (2 seeds)")
    from common import write_result
    write_result("fashion_structures", {
        "comparison": "plans at equal MACs: four-site vs residual-width, magnitude vs taylor vs learned, vs "
                      "Torch-Pruning's ViT recipe; one-shot and after the same fine-tune",
        "peer": {"package": "torch-pruning", "version": peer.version()},
        "data": f"{F.DATA} test (10,000 images)", "dense_model": str(F.DENSE.relative_to(F.ROOT)), "recipe": RECIPE,
        "macs_cut": args.cut, "target_macs": target, "schedule": F.SCHEDULE,
        "schedule_text": F.schedule_text(F.SCHEDULE), "seeds": seeds, "taylor_images": 1024,
        "sides_settings": {n: {"sites": s, "importance": i, "cost": c, "set": m[0] if m else []}
                           for n, (s, i, c, *m) in OURS.items()}
                          | {n: {"bottleneck": b, "importance": i, "round_to": None, "stem": "kept"}
                             for n, (b, i) in PEERS.items()},
        "dense": F.record(dense),
        "sides": {n: [F.record(x) | {"seed": s, "macs_vs_target": round(x["macs"] / target - 1, 4)}
                      for s, x in zip(seeds, v)] for n, v in sides.items()},
        "mean_over_seeds": means, "differences": comparisons, "verdicts": verdicts,
        "one_shot_curve": curve_rows, "curve_plot": str(curve_plot.relative_to(F.ROOT)),
        "plot": str(plot.relative_to(F.ROOT)), "wall_s": F.elapsed(t0),
    }, threads=args.threads)


if __name__ == "__main__":
    main()
