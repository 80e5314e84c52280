"""`vitdeploy report`: every variant side by side (params, MACs, top-1 per precision, measured latency and throughput
per backend and batch), the variant to ship for each latency budget, and plots.

Inputs are what the other commands wrote: each run (model dir) with its compress.json, deploy dirs (export.json)
inside it and eval*.json files, plus profile JSON files (`vitdeploy profile --out` or profiling/profile_engine.py).
A measurement belongs to a run when its artifact lies inside the run dir, when its sha256 is one the run's
export.json lists (a deploy dir copied to another machine), or when it was measured elsewhere (its path does not exist
here) and names the run as its variant (profile_engine.py --variant on a board).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from vitdeploy.bench.latency import roofline_line
from vitdeploy.bench.paired import SAME, format_speedup, paired_speedup
from vitdeploy.viz.pareto import front_at_noise, pareto_front
from vitdeploy.viz.plots import plot_accuracy_latency, plot_kept_dims, plot_latency_vs_batch
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_write_json, atomic_write_text, read_json, staged_dir
from vitdeploy.models import block_table, count_macs, count_params, load_model_dir
from vitdeploy.models.modeldir import is_model_dir

LATENCY_KEYS = ("artifact", "backend", "precision", "kind", "batch", "latency_ms", "throughput_ips", "threads", "iters",
                "mode", "rounds_ms", "roofline")
WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}  # bytes per weight: the tie-break "smaller" between precisions


# ------------------------------------------------------------------------------------------------- collect
def _within(artifact: str, folder: Path) -> bool:
    try:
        Path(artifact).resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def _deploy_entries(run: Path) -> dict[str, dict]:
    """sha256 -> {file, precision, kind} of every ONNX graph and engine listed by deploy dirs inside the run."""
    out: dict[str, dict] = {}
    for record_path in sorted(run.glob("*/export.json")):
        from vitdeploy.bench.artifacts import verify_deploy_dir

        record = verify_deploy_dir(record_path.parent, read_json(record_path))
        for key, kind in (("artifacts", "onnx"), ("engines", "engine")):
            for e in record.get(key) or []:
                if e.get("sha256"):
                    out[e["sha256"]] = {"file": str(record_path.parent / e["file"]), "precision": e.get("precision"), "kind": kind}
    return out


def _belongs(result: dict, run: Path, entries: dict[str, dict]) -> bool:
    """Inside the run dir, or one of its exported files by sha256, or measured elsewhere (the path does not exist
    here, e.g. an engine on a board) under the run's name."""
    artifact = str(result.get("artifact", ""))
    return (_within(artifact, run) or result.get("sha256") in entries
            or (result.get("variant") == run.name and not Path(artifact).exists()))


def _precision(record: dict, entries: dict[str, dict]) -> str:
    """A result's precision: its own field, else what export.json says of its file, else fp32 (older files)."""
    if record.get("precision"):
        return record["precision"]
    entry = entries.get(record.get("sha256") or "") or next(
        (e for e in entries.values() if Path(e["file"]).resolve() == Path(str(record.get("artifact", ""))).resolve()), None)
    return (entry or {}).get("precision") or "fp32"


def _accuracy(run: Path, entries: dict[str, dict], compress: Optional[dict], train: dict) -> list[dict]:
    """Every top-1 known for the run: each eval*.json in it, then the PyTorch top-1 compress/train recorded."""
    found = []
    for path in sorted(run.glob("eval*.json")):
        rec = read_json(path) or {}
        if rec.get("top1") is None:
            continue
        found.append({"precision": _precision(rec, entries), "backend": rec.get("backend"),
                      "kind": rec.get("kind") or ("torch" if str(rec.get("backend", "")).startswith("torch") else "onnx"),
                      "top1": rec["top1"], "top5": rec.get("top5"), "n": rec.get("n"), "data": rec.get("data"),
                      "top1_agreement": rec.get("top1_agreement"), "cosine_mean": rec.get("cosine_mean"),
                      "split": rec.get("split", "val"),
                      "source": f"{path.name} ({Path(str(rec.get('artifact', '?'))).name} on {rec.get('backend', '?')}, "
                                f"{rec.get('data', '?')} {rec.get('split', 'val')} split)"})
    top1, source = train.get("top1"), "train (PyTorch)"
    if compress:  # the last stage that was evaluated: fine-tuned, else pruned (no fine-tuning asked for)
        last = next((s for s in reversed(_stages(compress)) if s.get("top1") is not None), None)
        top1, source = (last["top1"], f"compress.json (PyTorch, {last['stage']})") if last else (None, "")
    if top1 is not None:
        found.append({"precision": "fp32", "backend": "torch-cpu", "kind": "torch", "top1": top1, "n": None,
                      "source": source})
    return found


def top1_for(accuracy: list[dict], precision: str, backend: Optional[str] = None) -> Optional[dict]:
    """The best-matching accuracy entry: same precision and backend, else same precision on a deployed artifact,
    else same precision in PyTorch; None when that precision was never evaluated."""
    same = [a for a in accuracy if a["precision"] == precision]
    for pick in ([a for a in same if backend and a["backend"] == backend], [a for a in same if a["kind"] != "torch"], same):
        if pick:
            return pick[0]
    return None


def _stages(compress: dict) -> list[dict]:
    """compress.json's stages, or dense → pruned → fine-tuned from its before/after records."""
    if compress.get("stages"):
        return compress["stages"]
    p, m, t = compress.get("params", {}), compress.get("macs", {}), compress.get("top1", {})
    stages = [{"stage": "dense", "params": p.get("before"), "macs": m.get("before"), "top1": t.get("before")},
              {"stage": "pruned", "params": p.get("after"), "macs": m.get("after"), "top1": t.get("pruned")}]
    if compress.get("finetune"):
        stages.append({"stage": "finetuned", "params": p.get("after"), "macs": m.get("after"), "top1": t.get("after")})
    return stages


def collect_run(run: Path, profiles: list[dict]) -> dict[str, Any]:
    """Everything known about one model dir: size, accuracy per precision, compression, and its measurements."""
    if not is_model_dir(run):
        raise VitDeployError(f"'{run}' is not a model dir (no vitdeploy.json); report takes the dirs written by train/compress")
    loaded = load_model_dir(run)
    size = tuple(loaded.data_config["input_size"])
    compress = read_json(run / "compress.json")
    entries = _deploy_entries(run)
    accuracy = _accuracy(run, entries, compress, loaded.meta.get("train") or {})
    latency = []
    for n, p in enumerate(profiles):
        for r in p.get("results", []):
            if _belongs(r, run, entries):
                row = {k: r[k] for k in LATENCY_KEYS if k in r} | {"precision": _precision(r, entries), "profile": n}
                if r.get("op_profile"):
                    row["op_profile"] = {k: r["op_profile"][k] for k in ("kernel_ms_per_run", "by_op_type")}
                latency.append(row | {"host": _host_line(p.get("host"), r.get("threads"))})
    fp32 = top1_for(accuracy, "fp32")
    return {
        "name": run.name, "path": str(run), "params": count_params(loaded.model), "macs": count_macs(loaded.model, size),
        "top1": fp32["top1"] if fp32 else None, "top1_source": fp32["source"] if fp32 else None,
        "recipe": (compress or {}).get("recipe", {}).get("name"), "compressed": compress is not None,
        "accuracy": accuracy, "latency": latency, "blocks": block_table(loaded.arch, loaded.model.embed_dim),
        "kept": (compress or {}).get("kept"), "dense_blocks": (compress or {}).get("dense_blocks"),
        "stages": _stages(compress) if compress else None, "budget": (compress or {}).get("budget"),
    }


def _host_line(host: Optional[dict], threads: Optional[int]) -> str:
    if not host:
        return "unknown host"
    gpu = (host.get("gpu") or {}).get("name")
    line = f"{host.get('cpu', '?')}" + (f" + {gpu}" if gpu else "")
    jetson = host.get("jetson") or {}
    if jetson.get("power_mode"):
        line += f", power mode {jetson['power_mode'].get('name')}" + ("" if jetson.get("locked") else " (clocks not locked)")
    return line + (f", {threads} threads" if threads else "")


# -------------------------------------------------------------------------------------------------- points
def _baseline(runs: list[dict]) -> dict:
    """The dense reference: the first run that was not compressed, else the first run."""
    return next((r for r in runs if not r["compressed"]), runs[0])


def build_points(runs: list[dict]) -> list[dict]:
    """One point per (variant, precision, backend, batch) measured: latency, throughput, top-1, size, speedup
    against the dense run on the same backend and batch (fp32, else the same precision). Later files win ties."""
    base = _baseline(runs)
    ref = {(r["backend"], r["batch"], r["precision"]): r for r in base["latency"]}
    points: dict[tuple, dict] = {}
    for run in runs:
        for r in run["latency"]:
            acc = top1_for(run["accuracy"], r["precision"], r["backend"])
            base_row = ref.get((r["backend"], r["batch"], "fp32")) or ref.get((r["backend"], r["batch"], r["precision"]))
            lat = r["latency_ms"]
            points[(run["name"], r["precision"], r["backend"], r["batch"])] = {
                "variant": run["name"], "precision": r["precision"], "backend": r["backend"], "batch": r["batch"],
                "p50_ms": lat["p50"], "p90_ms": lat.get("p90"), "p99_ms": lat.get("p99"),
                "throughput_ips": r["throughput_ips"], "top1": acc["top1"] if acc else None,
                "top1_source": acc["source"] if acc else None, "n_eval": acc.get("n") if acc else None,
                "params": run["params"], "macs": run["macs"], "host": r["host"],
                "mode": r.get("mode", "sequential"), "rounds_ms": r.get("rounds_ms"), "profile": r.get("profile"),
                "roofline": r.get("roofline"),
            }
            points[(run["name"], r["precision"], r["backend"], r["batch"])].update(
                _speedup_fields(base_row, points[(run["name"], r["precision"], r["backend"], r["batch"])], r is base_row))
    return list(points.values())


def _pairable(a: dict, b: dict) -> bool:
    """Two measurements timed interleaved in the same profile run, round for round."""
    ra, rb = a.get("rounds_ms"), b.get("rounds_ms")
    return (a.get("mode") == b.get("mode") == "interleaved" and a.get("profile") == b.get("profile")
            and a.get("backend") == b.get("backend") and a.get("batch") == b.get("batch")
            and bool(ra) and bool(rb) and len(ra) == len(rb))


def compare(base: dict, p: dict) -> dict:
    """Speedup of `p` over `base` (rows or points): paired per round with an interval and a verdict where both were
    timed interleaved in one run, else the ratio of p50s without either."""
    if _pairable(base, p):
        return paired_speedup(base["rounds_ms"], p["rounds_ms"])
    p50 = lambda r: r["latency_ms"]["p50"] if "latency_ms" in r else r["p50_ms"]  # noqa: E731
    return {"speedup": p50(base) / p50(p), "ci95": None, "verdict": None}


def _speedup_fields(base_row: Optional[dict], point: dict, is_base: bool = False) -> dict:
    """Speedup against the baseline and the latency the advice ranks by: the baseline's p50 divided by the paired
    speedup where there is one (drift of the machine then cannot reorder variants), else the point's own p50."""
    if base_row is None:
        return {"speedup": None, "speedup_ci95": None, "speedup_verdict": None, "p50_paired_ms": point["p50_ms"]}
    if is_base:
        return {"speedup": 1.0, "speedup_ci95": None, "speedup_verdict": None, "p50_paired_ms": point["p50_ms"]}
    s = compare(base_row, point)
    paired = base_row["latency_ms"]["p50"] / s["speedup"] if s["ci95"] else point["p50_ms"]
    return {"speedup": s["speedup"], "speedup_ci95": s["ci95"], "speedup_verdict": s["verdict"], "p50_paired_ms": paired}


def choose_setting(points: list[dict], backend: Optional[str] = None, batch: Optional[int] = None) -> tuple[str, int] | None:
    """The (backend, batch) the Pareto chart and the shipping advice use: the one asked for, else the one with the
    most points that have a top-1 (ties: the smaller batch, then the backend name)."""
    keys = {(p["backend"], p["batch"]) for p in points}
    if backend is not None or batch is not None:
        match = sorted(k for k in keys if (backend is None or k[0] == backend) and (batch is None or k[1] == batch))
        if not match:
            measured = ", ".join(f"{b} batch {n}" for b, n in sorted(keys)) or "nothing"
            raise VitDeployError(f"no measurement for backend {backend or 'any'} at batch {batch or 'any'}; measured: {measured}")
        keys = set(match)
    if not keys:
        return None
    count = lambda k: sum(1 for p in points if (p["backend"], p["batch"]) == k and p["top1"] is not None)  # noqa: E731
    return min(keys, key=lambda k: (-count(k), k[1], k[0]))


def weight_bytes(p: dict) -> float:
    """The size a tie between equivalent variants is broken by: params x bytes per weight of the precision."""
    return p["params"] * WEIGHT_BYTES.get(str(p["precision"]), 4)


def ship_advice(points: list[dict], setting: tuple[str, int]) -> dict[str, Any]:
    """For the chosen setting: the Pareto-optimal points and, for every latency budget, the variant to ship.

    Speed differences count only where they are distinguishable: two variants timed interleaved in one run whose
    paired speedup interval contains 1 are as fast as each other at this noise, and then the more accurate, else
    the smaller one is preferred. Variants without paired rounds (sequential profiles, different files) are
    compared by p50, and the advice says so."""
    mine = [p for p in points if (p["backend"], p["batch"]) == setting and p["top1"] is not None]
    same = lambda i, j: _pairable(mine[i], mine[j]) and compare(mine[i], mine[j])["verdict"] == SAME  # noqa: E731
    lat = [p.get("p50_paired_ms") or p["p50_ms"] for p in mine]
    front, beaten = front_at_noise([(t, p["top1"], weight_bytes(p)) for t, p in zip(lat, mine)], same)
    bands = [{"from_ms": lat[i], "to_ms": lat[front[k + 1]] if k + 1 < len(front) else None, "pick": mine[i]}
             for k, i in enumerate(front)]
    if bands:  # anything faster than the first pick is as fast as it at this noise, or beaten by it
        bands[0]["from_ms"] = min(lat)
    dominated = [{"point": mine[i], "by": mine[j], "why": why, "vs": compare(mine[i], mine[j])}
                 for i, (j, why) in sorted(beaten.items())]
    unpaired = any(not _pairable(a, b) for a in mine for b in mine if a is not b)
    return {"backend": setting[0], "batch": setting[1], "points": mine, "front": front, "bands": bands,
            "dominated": dominated, "unpaired": unpaired,
            "unevaluated": [p for p in points if (p["backend"], p["batch"]) == setting and p["top1"] is None]}


# ------------------------------------------------------------------------------------------------ markdown
def _fmt_count(n: Optional[float]) -> str:
    if n is None:
        return "—"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def _pct(v: Optional[float]) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _ms(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _x(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _lat(p: dict) -> float:
    """The latency the advice ranks by: paired against the baseline where it could be, else the p50."""
    return p.get("p50_paired_ms") or p["p50_ms"]


def _sx(p: dict) -> str:
    """A point's speedup against the dense baseline, with its interval where it was paired."""
    if p.get("speedup") is None:
        return "—"
    return format_speedup({"speedup": p["speedup"], "ci95": p.get("speedup_ci95")})


def _name(p: dict) -> str:
    return f"`{p['variant']}` {p['precision']}"


def _noise_width(points: list[dict]) -> float | None:
    """The top-1 difference (as a fraction) two variants need before it is more than sampling noise: the 95 % half
    width of a difference of two binomial proportions on the smallest eval set; None when no eval size is known."""
    ns = [p["n_eval"] for p in points if p.get("n_eval")]
    if not ns:
        return None
    acc = sum(p["top1"] for p in points) / len(points)
    return 1.96 * math.sqrt(2 * acc * (1 - acc) / min(ns))


def _noise_lines(front: list[dict], noise: float | None, n: int) -> list[str]:
    if noise is None:
        return []
    lines = [f"- Top-1 was measured on {n} images: differences under about {100 * noise:.1f} points are within sampling "
             "noise (95 %)."]
    for fast, slow in zip(front, front[1:]):
        gain = slow["top1"] - fast["top1"]
        if gain < noise:
            lines.append(f"- {_name(slow)} is only {100 * gain:.1f} points more accurate than {_name(fast)}, within that "
                         f"noise: prefer {_name(fast)} ({_x(_lat(slow) / _lat(fast))} faster) unless a larger "
                         "eval set shows the gap is real.")
    return lines


def _ship_section(advice: dict, base_name: str) -> list[str]:
    b, n = advice["backend"], advice["batch"]
    lines = ["## Which variant to ship", ""]
    if not advice["points"]:
        lines += [f"Nothing measured on {b} at batch {n} has a top-1: run `vitdeploy eval` on the artifacts "
                  "(e.g. `vitdeploy eval RUN/deploy --data SPEC --out RUN/eval.{precision}.json`).", ""]
        return lines
    lines += [f"For **{b} at batch {n}** (p50 latency of one call). Find your latency budget in the first column; "
              "the row is the most accurate variant that fits it.", "",
              "| p50 budget | ship | top-1 | p50 ms | p99 ms | img/s | speedup vs dense | params | MACs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for band in advice["bands"]:
        p = band["pick"]
        span = f"{_ms(band['from_ms'])} – {_ms(band['to_ms'])} ms" if band["to_ms"] else f"≥ {_ms(band['from_ms'])} ms"
        lines.append(f"| {span} | {_name(p)} | {_pct(p['top1'])} | {_ms(p.get('p50_paired_ms') or p['p50_ms'])} | "
                     f"{_ms(p['p99_ms'])} | "
                     f"{p['throughput_ips']:.0f} | {_sx(p)} | {_fmt_count(p['params'])} | {_fmt_count(p['macs'])} |")
    fastest = advice["bands"][0]["from_ms"]
    paired = [p for p in advice["points"] if p.get("speedup_ci95")]
    lines += [""]
    if paired:
        lines.append(f"- Budgets and p50 here are `{base_name}`'s p50 divided by each variant's paired speedup (the "
                     "median of per-round ratios), so drift of the machine during profiling cannot reorder the "
                     "variants; each one's own p50 is in the tables below.")
    lines += [f"- Under {_ms(fastest)} ms nothing measured fits: compress further, use a lower precision, or a "
              "faster backend.",
              "- Pareto-optimal (nothing else is both faster and at least as accurate): "
              + ", ".join(_name(advice["points"][i]) for i in advice["front"]) + "."]
    for d in advice["dominated"]:
        p, better, vs = d["point"], d["by"], d["vs"]
        ratio = format_speedup(vs)  # how much faster `better` is than `p`
        if d["why"] == "as fast":
            gain = "more accurate" if better["top1"] > p["top1"] else "as accurate and smaller"
            lines.append(f"- Skip {_name(p)} here: {_name(better)} is as fast at this noise ({ratio}) and {gain}.")
        elif vs.get("ci95"):
            lines.append(f"- Skip {_name(p)} here: {_name(better)} is faster ({ratio}) and at least as accurate.")
        else:
            lines.append(f"- Skip {_name(p)} here: {_name(better)} is at least as fast and at least as accurate.")
    if advice["unpaired"]:
        lines.append("- Some of these latencies were not timed interleaved in one run (a `--sequential` profile, or "
                     "different profile files): they are compared by p50 alone, and drift of the machine between them "
                     "can decide the order; profile the variants together to settle it.")
    for d in advice.get("drift") or []:
        lines.append(f"- The machine drifted while this was profiled: the reference's per-round p50 moved by "
                     f"{100 * d['spread']:.0f} % ({_ms(d['p10_ms'])} to {_ms(d['p90_ms'])} ms). The speedups and the "
                     "choices above are paired per round and cancel it; the single p50s carry it.")
    if advice["unevaluated"]:
        lines.append("- Measured but without a top-1 (not in this table): "
                     + ", ".join(_name(p) for p in advice["unevaluated"]) + "; run `vitdeploy eval` on them.")
    front = [advice["points"][i] for i in advice["front"]]
    lines += _noise_lines(front, _noise_width(advice["points"]), min((p["n_eval"] or 0) for p in advice["points"]))
    lines.append(f"- For a budget on tail latency, read the p99 column; speedups are against `{base_name}` on the "
                 "same backend and batch.")
    return lines + [""]


def _other_settings(points: list[dict], chosen: tuple[str, int]) -> list[str]:
    keys = sorted({(p["backend"], p["batch"]) for p in points} - {chosen})
    lines = []
    for key in keys:
        mine = [p for p in points if (p["backend"], p["batch"]) == key]
        fast = min(mine, key=_lat)
        rated = [p for p in mine if p["top1"] is not None]
        line = f"- {key[0]} batch {key[1]}: fastest {_name(fast)} ({_ms(_lat(fast))} ms)"
        if rated:
            front = [rated[i] for i in pareto_front([(_lat(p), p["top1"]) for p in rated])]
            line += "; Pareto-optimal " + ", ".join(f"{_name(p)} ({_ms(_lat(p))} ms, {_pct(p['top1'])})" for p in front)
        lines.append(line + ".")
    return (["Other settings (rerun with `--backend B --batch N` for their full advice):", "", *lines, ""]) if lines else []


def _summary_table(runs: list[dict], points: list[dict]) -> list[str]:
    """One row per variant × precision, one column group per backend × batch: everything at a glance."""
    keys = sorted({(p["backend"], p["batch"]) for p in points})
    base = _baseline(runs)
    head = ["variant", "precision", "params", "MACs", "top-1"]
    for backend, batch in keys:
        head += [f"{backend} b{batch} p50 ms", f"b{batch} img/s", f"b{batch} speedup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        precisions = list(dict.fromkeys([p["precision"] for p in points if p["variant"] == run["name"]])) or ["fp32"]
        for prec in precisions:
            acc = top1_for(run["accuracy"], prec)
            row = [run["name"], prec, f"{_fmt_count(run['params'])} ({run['params'] / base['params']:.2f}×)",
                   f"{_fmt_count(run['macs'])} ({run['macs'] / base['macs']:.2f}×)", _pct(acc["top1"] if acc else None)]
            for key in keys:
                p = next((p for p in points if (p["variant"], p["precision"], p["backend"], p["batch"]) == (run["name"], prec, *key)), None)
                row += [_ms(p["p50_ms"]), f"{p['throughput_ips']:.0f}", _sx(p)] if p else ["—", "—", "—"]
            lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def _latency_tables(points: list[dict], base_name: str, peaks: Optional[dict] = None) -> list[str]:
    lines = ["## Latency by backend and batch", "",
             f"Sorted by p50; speedup against `{base_name}` fp32 on the same backend and batch: where the two were "
             "timed interleaved in one profile run, the median of their per-round ratios with its 95 % bootstrap "
             "interval (an interval containing 1.00 means not distinguishable at this noise), else the ratio of "
             "p50s. Latency is per call (the whole batch), after warm-up, on the same seeded inputs for every "
             "variant.", ""]
    for backend, batch in sorted({(p["backend"], p["batch"]) for p in points}):
        mine = sorted((p for p in points if (p["backend"], p["batch"]) == (backend, batch)), key=lambda p: p["p50_ms"])
        hosts = ", ".join(dict.fromkeys(p["host"] for p in mine))
        lines += [f"### {backend}, batch {batch}", "", f"Measured on {hosts}.", "",
                  "| variant | precision | p50 ms | p90 ms | p99 ms | img/s | speedup vs dense | top-1 | params | MACs |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for p in mine:
            lines.append(f"| {p['variant']} | {p['precision']} | {_ms(p['p50_ms'])} | {_ms(p['p90_ms'])} | {_ms(p['p99_ms'])} | "
                         f"{p['throughput_ips']:.0f} | {_sx(p)} | {_pct(p['top1'])} | {_fmt_count(p['params'])} | "
                         f"{_fmt_count(p['macs'])} |")
        lines.append("")
    for backend, peak in (peaks or {}).items():
        line = roofline_line(backend, peak, [p for p in points if p["backend"] == backend and p.get("roofline")],
                             name=lambda p: f"`{p['variant']}` {p['precision']}")
        if line:
            lines += [f"- {line[0].upper()}{line[1:]}.", ""]
    return lines


def _compression_section(runs: list[dict], plots: dict[str, Any]) -> list[str]:
    compressed = [r for r in runs if r["stages"]]
    if not compressed:
        return []
    lines = ["## Compression", ""]
    for run in compressed:
        lines += [f"### {run['name']}" + (f" (recipe `{run['recipe']}`)" if run["recipe"] else ""), "",
                  "| stage | params | MACs | top-1 (PyTorch) |", "|---|---|---|---|"]
        for s in run["stages"]:
            lines.append(f"| {s['stage']} | {_fmt_count(s.get('params'))} | {_fmt_count(s.get('macs'))} | {_pct(s.get('top1'))} |")
        if run.get("budget"):
            from vitdeploy.runtime.latency_table import describe_budget

            lines += ["", *(f"- {line}" for line in describe_budget(run["budget"]))]
            if run["budget"].get("measured_ms") is not None:
                lines.append(f"- predicted vs measured per plan, and the rate-based plan beside it: "
                             f"`{run['path']}/latency_budget.png`")
        if run["name"] in plots.get("kept_dims", {}):
            lines += ["", f"![dims kept per block]({plots['kept_dims'][run['name']]})"]
        lines.append("")
    return lines


def _op_section(runs: list[dict]) -> list[str]:
    rows = [(run["name"], r) for run in runs for r in run["latency"] if r.get("op_profile")]
    if not rows:
        return []
    lines = ["## Where the time goes", "", "onnxruntime's profiler in a separate session (it slows the run down, so "
             "compare shares, not milliseconds):", "", "| variant | precision | backend | batch | top op types by time |",
             "|---|---|---|---|---|"]
    for name, r in rows:
        ops = ", ".join(f"{o['op_type']} {o['percent']:.0f} %" for o in r["op_profile"]["by_op_type"][:5])
        lines.append(f"| {name} | {r['precision']} | {r['backend']} | {r['batch']} | {ops} |")
    return lines + [""]


def render_markdown(runs: list[dict], points: list[dict], advice: Optional[dict], plots: dict[str, Any],
                    unmatched: list[str], peaks: Optional[dict] = None) -> str:
    base = _baseline(runs)
    lines = ["# vitdeploy report", "",
             f"{len(runs)} variants: " + ", ".join(f"`{r['name']}`" + (" (dense baseline)" if r is base else
                                                   f" (recipe `{r['recipe']}`)" if r["recipe"] else " (compressed)")
                                                   for r in runs) + ".", ""]
    if advice is not None:
        lines += _ship_section(advice, base["name"])
        if "accuracy_latency" in plots:
            lines += [f"![top-1 against latency]({plots['accuracy_latency']})", ""]
        lines += _other_settings(points, (advice["backend"], advice["batch"]))
    else:
        lines += ["No latency was measured for these runs: profile their deploy dirs (`vitdeploy profile RUN/deploy "
                  "--out RUN/profile.json`) and pass the file with `--profile`.", ""]
    lines += ["## Summary", "", *_summary_table(runs, points)]
    if points:
        lines += _latency_tables(points, base["name"], peaks)
        if "latency_batch" in plots:
            lines += [f"![latency and throughput against batch size]({plots['latency_batch']})", ""]
    lines += _compression_section(runs, plots)
    lines += _op_section(runs)
    lines += ["## Sources", ""]
    for run in runs:
        accs = "; ".join(f"{a['precision']}: {_pct(a['top1'])} from {a['source']}" for a in run["accuracy"]) or "none"
        lines.append(f"- `{run['name']}` ({run['path']}): top-1 {accs}.")
    if unmatched:
        lines.append(f"- Measurements that belong to none of these runs (not shown): {', '.join(unmatched)}.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- plots
def _write_plots(runs: list[dict], points: list[dict], advice: Optional[dict], out: Path) -> dict[str, Any]:
    plots: dict[str, Any] = {"kept_dims": {}}
    if advice is not None and advice["points"]:
        paired = any(p.get("speedup_ci95") for p in advice["points"])
        title = (f"Top-1 against latency: {advice['backend']}, batch {advice['batch']} "
                 + ("(dense p50 / paired speedup)" if paired else "(p50)"))
        shown = [dict(p, p50_ms=_lat(p)) for p in advice["points"]]  # the latencies the advice ranks by
        plots["accuracy_latency"] = plot_accuracy_latency(shown, advice["front"], out / "accuracy_latency.png", title).name
    if points:
        series: dict[tuple[str, str, str], list[tuple[int, float, float]]] = {}
        for p in points:
            series.setdefault((p["variant"], p["precision"], p["backend"]), []).append((p["batch"], p["p50_ms"], p["throughput_ips"]))
        plots["latency_batch"] = plot_latency_vs_batch(series, out / "latency_batch.png", "Latency and throughput against batch size").name
    base = _baseline(runs)
    for run in runs:
        if run["kept"]:
            dense = run["dense_blocks"] or (base["blocks"] if not base["compressed"] and len(base["blocks"]) == len(run["kept"]) else None)
            path = plot_kept_dims(run["kept"], dense, out / f"kept_dims_{run['name']}.png",
                                  f"{run['name']}: dims kept per block" + (" (grey: dense)" if dense else ""))
            plots["kept_dims"][run["name"]] = path.name
    return plots


def _advice_json(advice: dict) -> dict:
    brief = lambda p: {k: p[k] for k in ("variant", "precision", "p50_ms", "p99_ms", "top1", "speedup",  # noqa: E731
                                         "speedup_ci95", "speedup_verdict", "p50_paired_ms")}
    return {"backend": advice["backend"], "batch": advice["batch"],
            "pareto_front": [brief(advice["points"][i]) for i in advice["front"]],
            "budgets": [{"from_ms": b["from_ms"], "to_ms": b["to_ms"], **brief(b["pick"])} for b in advice["bands"]]}


def build_report(run_dirs: list[Path], profile_files: list[Path], out: Path, backend: Optional[str] = None,
                 batch: Optional[int] = None) -> dict:
    """Collect the runs and profiles, choose the advice setting, write report.json, report.md and the PNG plots.

    Profile files named profile*.json inside a run dir are read too. Everything is read and checked before the
    first file is written.
    """
    if not run_dirs:
        raise VitDeployError("report needs at least one run dir")
    files = list(dict.fromkeys(Path(p).resolve() for p in [*profile_files, *(f for r in run_dirs for f in sorted(Path(r).glob("profile*.json")))]))
    profiles = []
    for p in files:
        data = read_json(p)
        if data is None:
            raise VitDeployError(f"profile file '{p}' does not exist")
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise VitDeployError(f"'{p}' is not a profile file (no 'results' list); write one with vitdeploy profile --out")
        profiles.append(data)
    runs = [collect_run(Path(r), profiles) for r in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise VitDeployError(f"run dirs must have distinct names, got {', '.join(names)}")
    points = build_points(runs)
    setting = choose_setting(points, backend, batch)
    advice = ship_advice(points, setting) if setting else None
    peaks: dict[str, Any] = {}
    for p in profiles:
        for name, peak in (p.get("peaks") or {}).items():
            peaks.setdefault(name, peak)
    if advice is not None:
        advice["drift"] = [d for p in profiles for d in p.get("drift") or []
                           if (d.get("backend"), d.get("batch")) == setting and d.get("large")]
    matched = {r["artifact"] for run in runs for r in run["latency"]}
    unmatched = sorted({str(r.get("artifact")) for p in profiles for r in p.get("results", []) if r.get("artifact") not in matched})
    with staged_dir(out) as stage:  # a kill mid-report leaves the previous report or none, never half of one
        plots = _write_plots(runs, points, advice, stage)
        report = {"runs": runs, "points": points, "baseline": _baseline(runs)["name"],
                  "advice": None if advice is None else _advice_json(advice),
                  "plots": plots, "unmatched": unmatched, "peaks": peaks,
                  "host": next((p.get("host") for p in profiles if p.get("host")), None)}
        atomic_write_text(stage / "report.md", render_markdown(runs, points, advice, plots, unmatched, peaks))
        atomic_write_json(stage / "report.json", report)
    return report
