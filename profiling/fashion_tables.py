"""The Fashion-MNIST comparison tables of docs/results.md, from the committed result files (so the page quotes
the files, not a transcription). Prints them, or with --docs rewrites each table between its
`<!-- fashion-NAME -->` markers in docs/results.md:

    python profiling/fashion_tables.py [--docs] [vtp|mcf|decompose|hybrid|peer ...]
"""
from __future__ import annotations

import json
import re
import sys

from common import RESULTS

DOCS = RESULTS.parent.parent / "docs" / "results.md"


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def ci(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{pct(r['top1'])} ({pct(lo)}–{pct(hi)})"


def diff(d: dict) -> str:
    lo, hi = d["ci95_bootstrap"]
    seeds = ", ".join(f"{100 * s['difference']:+.2f}" for s in d["per_seed"])
    p = ", ".join(f"{s['mcnemar_p']:.2g}" for s in d["per_seed"])
    return f"{100 * d['mean_difference']:+.2f} ({100 * lo:+.2f} to {100 * hi:+.2f}) | {seeds} | {p}"


def seeds_top1(m: dict) -> str:
    return ", ".join(pct(v) for v in m["per_seed"])


def header(first: str) -> list[str]:
    return [f"| {first} | params | MACs | top-1, mean over seeds (95 % CI) | per seed |", "|---|---:|---:|---|---|"]


def row(label: str, side: dict, mean: dict) -> str:
    return f"| {label} | {side['params'] / 1e3:.1f} k | {side['macs'] / 1e6:.2f} M | {ci(mean)} | {seeds_top1(mean)} |"


def dense_row(d: dict) -> str:
    return f"| dense | {d['params'] / 1e3:.1f} k | {d['macs'] / 1e6:.2f} M | {ci(d)} | – |"


DIFF_HEADER = ["| difference | mean over seeds (95 % CI) | per seed | McNemar p per seed |", "|---|---|---|---|"]


def vtp(r: dict) -> list[str]:
    m, s = r["mean_over_seeds"], r["sides"]
    out = header("side") + [dense_row(r["dense"])]
    for n, label in (("vtp_pruned", "VTP rate 0.4, before fine-tune"), ("vtp_finetuned", "VTP rate 0.4, fine-tuned"),
                     ("magnitude_pruned", f"magnitude rate {s['magnitude_pruned'][0]['rate']:g}, before fine-tune"),
                     ("magnitude_finetuned", "magnitude, fine-tuned"),
                     ("vtp_target_finetuned", f"VTP rate {s['vtp_target_finetuned'][0]['rate']:g} (≥ 40 % MACs cut), fine-tuned")):
        out.append(row(label, s[n][0], m[n]))
    c = r["vtp_minus_magnitude"]
    out += [""] + DIFF_HEADER + [f"| VTP − magnitude, before fine-tune | {diff(c['before_finetune'])} |",
                                 f"| VTP − magnitude, fine-tuned | {diff(c['after_finetune'])} |",
                                 f"| VTP rate 0.4 − dense | {diff(c['vtp_finetuned_vs_dense'])} |",
                                 f"| VTP at the MACs target − dense | {diff(c['vtp_target_finetuned_vs_dense'])} |"]
    return out


def mcf(r: dict) -> list[str]:
    m, s = r["mean_over_seeds"], r["sides"]
    out = header("side") + [dense_row(r["dense"])]
    for stage, label in (("one_shot", "one-shot"), ("scheduled", "scheduled + recovery"), ("finetuned", "fine-tuned")):
        for scorer, name in (("fis", "MCF (FIS)"), ("magnitude", "magnitude")):
            n = f"{scorer}_{stage}"
            out.append(row(f"{name}, {label}", s[n][0], m[n]))
    c = r["mcf_minus_magnitude"]
    out += [""] + DIFF_HEADER + [f"| MCF − magnitude, {label} | {diff(c[k])} |" for k, label in
                                 (("one_shot", "one-shot"), ("scheduled", "scheduled"), ("finetuned", "fine-tuned"))]
    out.append(f"| MCF fine-tuned − dense | {diff(c['mcf_finetuned_vs_dense'])} |")
    return out


def decompose(r: dict) -> list[str]:
    m = r["mean_over_seeds"]
    out = ["| variant | rank (mean) | params | MACs | before fine-tune (95 % CI) | after fine-tune (95 % CI) | "
           "after − SVD after (95 % CI) |", "|---|---:|---:|---:|---|---|---|",
           f"| dense | – | {r['dense']['params'] / 1e3:.1f} k | {r['dense']['macs'] / 1e6:.2f} M | {ci(r['dense'])} | – | – |"]
    for v in ["vtp", *r["ranks"]]:
        b, a = m[f"{v}_before"], m[f"{v}_after"]
        rank = r["ranks"][v]["rank_mean"] if v in r["ranks"] else "–"
        vs = r["minus_svd"].get(f"{v}_after")
        vs_text = "–" if vs is None else (f"{100 * vs['mean_difference']:+.2f} ({100 * vs['ci95_bootstrap'][0]:+.2f} to "
                                          f"{100 * vs['ci95_bootstrap'][1]:+.2f})")
        twin = f" (same factors as {a['same_factors_as']})" if "same_factors_as" in a else ""
        out.append(f"| {'VTP alone' if v == 'vtp' else 'VTP + ' + v}{twin} | {rank} | {b['params'] / 1e3:.1f} k | "
                   f"{b['macs'] / 1e6:.2f} M | {ci(b)} | {ci(a)} | {vs_text} |")
    return out


def hybrid(r: dict) -> list[str]:
    m, s, p = r["mean_over_seeds"], r["sides"], r["paper_measures"]
    out = header("side") + [dense_row(r["dense"])]
    for n, label in (("hybrid_before", "hybrid, before fine-tune"), ("hybrid_after", "hybrid, fine-tuned"),
                     ("vtp_before", f"VTP rate {s['vtp_before'][0]['rate']:g} (matched params), before fine-tune"),
                     ("vtp_after", "VTP, fine-tuned")):
        out.append(row(label, s[n][0], m[n]))
    c = r["hybrid_minus_vtp"]
    out += [""] + DIFF_HEADER + [f"| hybrid − VTP, before fine-tune | {diff(c['before_finetune'])} |",
                                 f"| hybrid − VTP, fine-tuned | {diff(c['after_finetune'])} |",
                                 f"| hybrid fine-tuned − dense | {diff(c['hybrid_after_vs_dense'])} |"]
    out += ["", "| paper's measure | params cut | relative error increase |", "|---|---:|---:|"]
    out += [f"| {'hybrid' if n.startswith('hybrid') else 'VTP'} | {100 * v['params_cut']:.1f} % | "
            f"{100 * v['relative_error_increase']:+.1f} % |" for n, v in p.items()]
    return out


def peer(r: dict) -> list[str]:
    m, s = r["mean_over_seeds"], r["sides"]
    out = header("side") + [dense_row(r["dense"])]
    for n, label in (("vtp_pruned", "vtp-40, before fine-tune"), ("vtp_finetuned", "vtp-40, fine-tuned"),
                     ("peer_pruned", f"peer ratio {s['peer_pruned'][0]['ratio']:g}, before fine-tune"),
                     ("peer_finetuned", "peer, fine-tuned")):
        out.append(row(label, s[n][0], m[n]))
    c = r["vtp_minus_peer"]
    out += [""] + DIFF_HEADER + [f"| vtp-40 − peer, before fine-tune | {diff(c['before_finetune'])} |",
                                 f"| vtp-40 − peer, fine-tuned | {diff(c['after_finetune'])} |"]
    out += ["", "| ORT CPU, 2 threads | batch | p50 ms | speedup over dense | MACs ratio |", "|---|---:|---:|---:|---:|"]
    for b in r["speed_ort_cpu"]:
        out.append(f"| dense | {b['batch']} | {b['p50_ms']['dense']:.2f} | 1.00× | 1.00× |")
        for k, v in b["variants"].items():
            out.append(f"| {k} | {b['batch']} | {b['p50_ms'][k]:.2f} | {v['speedup']:.2f}× | {v['macs_ratio']:.2f}× |")
    return out


def curve_table(rows: list[dict], a: str, b: str, a_label: str, b_label: str) -> list[str]:
    out = [f"| rate | MACs | {a_label} (95 % CI) | {b_label} (95 % CI) | difference, mean over seeds (95 % CI) | per seed |",
           "|---:|---:|---|---|---|---|"]
    for p in rows:
        d = p[f"{a}_minus_{b}"]
        lo, hi = d["ci95_bootstrap"]
        seeds = ", ".join(f"{100 * x['difference']:+.2f}" for x in d["per_seed"])
        out.append(f"| {p['rate']:g} | {p['macs'] / 1e6:.2f} M | {ci(p[a])} | {ci(p[b])} | "
                   f"{100 * d['mean_difference']:+.2f} ({100 * lo:+.2f} to {100 * hi:+.2f}) | {seeds} |")
    return out


def vtp_curve(r: dict) -> list[str]:
    return curve_table(r["curve_before_finetune"], "vtp", "magnitude", "VTP, no fine-tune", "magnitude, same MACs")


def mcf_curve(r: dict) -> list[str]:
    return curve_table(r["curve_one_shot"], "fis", "magnitude", "MCF (FIS) one-shot", "magnitude one-shot")


STRUCTURE_LABELS = {
    "four_site_magnitude": "four sites, magnitude (the old default plan)", "four_site_taylor": "four sites, taylor",
    "four_site_learned": "four sites, learned (vtp-40's sites)", "embed_magnitude": "embed + q/k + v + hidden, magnitude",
    "embed_learned": "embed + q/k + v + hidden, learned",
    "embed_learned_a16": "embed + q/k + v + hidden, learned, multiples of 16",
    "embed_taylor": "embed + q/k + v + hidden, taylor",
    "embed_taylor_per_mac": "embed + q/k + v + hidden, taylor per MAC",
    "no_embed_taylor_per_mac": "q/k + v + hidden, taylor per MAC",
    "peer_uniform_l2": "Torch-Pruning ViT recipe, L2", "peer_uniform_taylor": "Torch-Pruning ViT recipe, Taylor",
    "peer_bottleneck_taylor": "Torch-Pruning bottleneck, Taylor",
}


def structures(r: dict) -> list[str]:
    m, s = r["mean_over_seeds"], r["sides"]
    out = ["| plan | embed width | MACs | one-shot top-1 (95 % CI) | fine-tuned top-1 (95 % CI) |",
           "|---|---:|---:|---|---|", f"| dense | 96 | {r['dense']['macs'] / 1e6:.2f} M | {ci(r['dense'])} | – |"]
    for n, label in STRUCTURE_LABELS.items():
        if f"{n}_pruned" not in s:
            continue
        ft = m.get(f"{n}_finetuned")
        out.append(f"| {label} | {s[n + '_pruned'][0].get('embed_dim', '')} | {s[n + '_pruned'][0]['macs'] / 1e6:.2f} M | "
                   f"{ci(m[n + '_pruned'])} | {ci(ft) if ft else '–'} |")
    out += [""] + DIFF_HEADER
    for k, d in r["differences"].items():
        a, b = k.rsplit("_", 1)[0].split("_minus_")
        stage = "one-shot" if k.endswith("_pruned") else "fine-tuned"
        out.append(f"| {STRUCTURE_LABELS[a]} − {STRUCTURE_LABELS[b]}, {stage} | {diff(d)} |")
    return out


def structures_curve(r: dict) -> list[str]:
    names = [n for n in STRUCTURE_LABELS if n in r["one_shot_curve"][0]["sides"]]
    out = ["| plan | " + " | ".join(f"{row['macs_cut']:g}× cut" for row in r["one_shot_curve"]) + " |",
           "|---|" + "---|" * len(r["one_shot_curve"])]
    for n in names:
        out.append(f"| {STRUCTURE_LABELS[n]} | " + " | ".join(ci(row["sides"][n]) for row in r["one_shot_curve"]) + " |")
    return out


def structures_speed(r: dict) -> list[str]:
    """Per plan: speedup and ÷ MACs ratio at batch 8 and 1, spin-waiting off (the interleaving default) and, where
    the result has them, with ORT's default session (spinning on)."""
    modes = [m for m in (False, True) if any(x.get("spin", False) == m for x in r["rows"])]
    head, rule = "| plan (DeiT-S, ORT CPU, 2 threads) | embed width | MACs ratio |", "|---|---:|---:|"
    for m in modes:
        for b in (8, 1):
            head += f" b{b}{', spin' if m else ''}: speedup (95 % CI) | ÷ MACs |"
            rule += "---|---:|"
    out = [head, rule]
    rows = {(x.get("spin", False), x["batch"]): x for x in r["rows"]}
    for k in rows[(False, 8)]["variants"]:
        line = f"| {k} | {r['settings'][k]['embed_dim']} | {rows[(False, 8)]['variants'][k]['macs_ratio']:.3f}× |"
        for m in modes:
            for b in (8, 1):
                v = rows[(m, b)]["variants"][k]
                lo, hi = v["speedup_ci95"]
                line += f" {v['speedup']:.3f}× ({lo:.3f}–{hi:.3f}) | {v['speedup_over_macs_ratio']:.3f} |"
        out.append(line)
    return out


def latency_budget(r: dict) -> list[str]:
    """Per seed: the latency plan and the rate plan measured in one run against dense, what each keeps, and top-1."""
    out = ["| seed | plan | embed width | MACs | latency ÷ dense (same run) | importance kept | one-shot top-1 (95 % CI) "
           "| fine-tuned top-1 (95 % CI) |", "|---|---|---:|---:|---:|---:|---|---|",
           f"| – | dense | 96 | {r['dense']['macs'] / 1e6:.2f} M | 1 | 100 % | {ci(r['dense'])} | – |"]
    s = r["sides"]
    for i, (seed, b) in enumerate(zip(r["seeds"], r["budget"])):
        rb, total = b["rate_based"], b["total_importance"]
        for name, label, shape, ms, kept in (
                ("latency", f"latency plan ({r.get('latency_ratio', 0.5):g} × dense)", b["shape"],
                 rb["budget_plan_measured_ms"], b["retained_importance"]),
                ("rate", f"rate plan (rate {rb['rate']:.3f})", rb["shape"], rb["measured_ms"],
                 rb["retained_importance"])):
            out.append(f"| {seed} | {label} | {shape['embed']} | {s[name + '_pruned'][i]['macs'] / 1e6:.2f} M | "
                       f"{ms / rb['dense_measured_ms']:.3f} | {100 * kept / total:.1f} % | {ci(s[name + '_pruned'][i])} | "
                       f"{ci(s[name + '_finetuned'][i])} |")
    out += [""] + DIFF_HEADER
    for stage, label in (("pruned", "one-shot"), ("finetuned", "fine-tuned")):
        out.append(f"| latency plan − rate plan, {label} | {diff(r['latency_minus_rate'][stage])} |")
    return out


TABLES = {"vtp": vtp, "mcf": mcf, "decompose": decompose, "hybrid": hybrid, "peer": peer,
          "vtp-curve": vtp_curve, "mcf-curve": mcf_curve, "structures": structures,
          "structures-curve": structures_curve, "structures-speed": structures_speed, "latency-budget": latency_budget}
FILES = {"vtp-curve": "fashion_vtp", "mcf-curve": "fashion_mcf", "structures-curve": "fashion_structures",
         "structures-speed": "prune_structures", "latency-budget": "fashion_latency_budget"}

def fill_docs(names: list[str]) -> None:
    text = DOCS.read_text()
    for name in names:
        path = RESULTS / f"{FILES.get(name, 'fashion_' + name)}.json"
        if path.exists():
            table = "\n".join(TABLES[name](json.loads(path.read_text())))
            text, n = re.subn(rf"(<!-- fashion-{name} -->\n).*?(<!-- /fashion-{name} -->)",
                              lambda m: m.group(1) + table + "\n" + m.group(2), text, flags=re.S)
            print(f"{name}: {'filled' if n else 'no markers in ' + DOCS.name}")
    DOCS.write_text(text)


def show(name: str) -> None:
    path = RESULTS / f"{FILES.get(name, 'fashion_' + name)}.json"
    if not path.exists():
        print(f"(no {path.name} yet)\n")
        return
    r = json.loads(path.read_text())
    wall = f"; wall {r['wall_s'] / 60:.0f} min" if "wall_s" in r else ""
    print(f"### {name}: {r.get('comparison', r['benchmark'])}\n\n{r.get('schedule_text', '')}{wall}\n")
    print("\n".join(TABLES[name](r)))
    for k, v in r.get("verdicts", {}).items():
        print(f"- {k}: {v}")
    if "targets" in r:
        print(f"- targets: {r['targets']}")
    print()


if __name__ == "__main__":
    args = sys.argv[1:]
    docs = "--docs" in args
    names = [a for a in args if a != "--docs"] or list(TABLES)
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise SystemExit(f"unknown table {unknown[0]!r}; known: {', '.join(TABLES)}")
    if docs:
        fill_docs(names)
    else:
        for name in names:
            show(name)
