"""`vitdeploy report`: one table of every variant: params, MACs, top-1, and measured latency and throughput."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_write_json, atomic_write_text, read_json
from vitdeploy.models import count_macs, count_params, load_model_dir
from vitdeploy.models.modeldir import is_model_dir


def _within(artifact: str, folder: Path) -> bool:
    try:
        Path(artifact).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def collect_run(run: Path, profiles: list[dict]) -> dict[str, Any]:
    """Everything known about one model dir: size, accuracy, and its profiled artifacts."""
    if not is_model_dir(run):
        raise VitDeployError(f"'{run}' is not a model dir (no vitdeploy.json); report takes the dirs written by train/compress")
    loaded = load_model_dir(run)
    size = tuple(loaded.data_config["input_size"])
    evaluation = read_json(run / "eval.json")
    compress = read_json(run / "compress.json")
    train = loaded.meta.get("train") or {}
    if evaluation is not None:
        top1, top1_source = evaluation.get("top1"), f"eval of {Path(evaluation.get('artifact', '?')).name}"
    elif compress is not None:
        top1, top1_source = compress["top1"].get("after"), "compress (PyTorch)"
    else:
        top1, top1_source = train.get("top1"), "train (PyTorch)"
    latency = [r | {"host": p.get("host")} for p in profiles for r in p.get("results", []) if _within(r["artifact"], run)]
    return {
        "name": run.name, "path": str(run), "params": count_params(loaded.model), "macs": count_macs(loaded.model, size),
        "top1": top1, "top1_source": top1_source, "recipe": (compress or {}).get("recipe", {}).get("name"),
        "latency": [{k: r[k] for k in ("artifact", "backend", "batch", "latency_ms", "throughput_ips", "threads") if k in r}
                    for r in latency],
    }


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def render_markdown(runs: list[dict], host: dict | None) -> str:
    keys = sorted({(r["backend"], r["batch"]) for run in runs for r in run["latency"]})
    base = runs[0]
    lines = ["# vitdeploy report", ""]
    if host:
        lines.append(f"Measured on {host.get('cpu', '?')} ({host.get('threads', '?')} threads), "
                     f"onnxruntime {host.get('versions', {}).get('onnxruntime', '?')}, torch {host.get('versions', {}).get('torch', '?')}.")
        lines.append("")
    head = ["variant", "params", "MACs", "top-1"]
    for backend, batch in keys:
        head += [f"{backend} b{batch} p50 ms", f"b{batch} img/s", f"b{batch} speedup"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        row = [run["name"], f"{_fmt_count(run['params'])} ({run['params'] / base['params']:.2f}×)",
               f"{_fmt_count(run['macs'])} ({run['macs'] / base['macs']:.2f}×)",
               "—" if run["top1"] is None else f"{100 * run['top1']:.1f} %"]
        for key in keys:
            mine = next((r for r in run["latency"] if (r["backend"], r["batch"]) == key), None)
            ref = next((r for r in base["latency"] if (r["backend"], r["batch"]) == key), None)
            if mine is None:
                row += ["—", "—", "—"]
                continue
            p50 = mine["latency_ms"]["p50"]
            speed = f"{ref['latency_ms']['p50'] / p50:.2f}×" if ref else "—"
            row += [f"{p50:.2f}", f"{mine['throughput_ips']:.0f}", speed]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Ratios and speedups are relative to `{base['name']}`. Latency is the median of timed runs after "
              "warm-up on the same seeded inputs; top-1 is on the val split.", ""]
    for run in runs:
        lines.append(f"- `{run['name']}`: top-1 from {run['top1_source']}" + (f"; recipe `{run['recipe']}`" if run["recipe"] else "") + ".")
    return "\n".join(lines) + "\n"


def build_report(run_dirs: list[Path], profile_files: list[Path], out: Path) -> dict:
    profiles = []
    for p in profile_files:
        data = read_json(p)
        if data is None:
            raise VitDeployError(f"profile file '{p}' does not exist")
        profiles.append(data)
    runs = [collect_run(Path(r), profiles) for r in run_dirs]
    host = next((p.get("host") for p in profiles if p.get("host")), None)
    report = {"runs": runs, "host": host}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(runs, host))
    return report
