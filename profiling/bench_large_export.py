"""Large-model export: wall time and peak memory of `vitdeploy export` for ViT-L/16 and ViT-H/14 (random weights).

Each export runs as its own child process (`python -m vitdeploy export NAME --precision P --target cpu`), so the
peak resident memory measured is that export's alone: os.wait4 returns the child's own rusage (ru_maxrss, KiB on
Linux). ViT-H/14's FP32 weights (2.5 GB) are over protobuf's 2 GiB limit, so its FP32 graph is written with
external data; the FP16 graph halves the size. Parity runs on seeded random inputs (there is no data for these
models here). The budget the issue sets is 24 GiB; `within_budget` records whether each run stayed under it.

    .venv/bin/python profiling/bench_large_export.py                       # both models, fp32 and fp32,fp16
    .venv/bin/python profiling/bench_large_export.py --models vit_large_patch16_224 --runs fp32,fp16
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

BUDGET_GIB = 24.0
MODELS = ("vit_large_patch16_224", "vit_huge_patch14_224")
RUNS = ("fp32", "fp32,fp16")


def _available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def run_one(model: str, precisions: str, scratch: Path, extra: list[str]) -> dict:
    """One export in a child process: wall seconds, the child's peak RSS, and what export.json says it wrote."""
    out = scratch / f"{model}.{precisions.replace(',', '_')}"
    cmd = [sys.executable, "-m", "vitdeploy", "export", model, "--out", str(out), "--precision", precisions,
           "--target", "cpu", *extra]
    free_before = _available_gib()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    log = p.stdout.read() if p.stdout else ""
    rc = os.waitstatus_to_exitcode(status)
    peak_gib = usage.ru_maxrss / 2**20  # KiB -> GiB
    rec = {"model": model, "precisions": precisions, "exit_code": rc, "wall_s": round(wall, 1),
           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_gib": round(peak_gib, 2),
           "within_budget": rc == 0 and peak_gib < BUDGET_GIB, "available_gib_before": free_before,
           "command": " ".join(cmd[1:]).replace(str(scratch), "SCRATCH")}
    if rc != 0:
        rec["error"] = log.strip().splitlines()[-1] if log.strip() else "no output"
        return rec
    record = json.loads((out / "export.json").read_text())
    rec["artifacts"] = [{"file": a["file"], "bytes": a["bytes"], "external_data": a["external_data"],
                         "nodes": a["nodes"], "max_abs_diff": a["parity"]["max_abs_diff"],
                         "cosine": a["parity"]["cosine"]} for a in record["artifacts"]]
    rec["fp16"] = (record.get("fp16") or {}).get("agreement")
    rec["deploy_dir_bytes"] = sum(f["bytes"] for f in record["files"])
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--runs", nargs="+", default=list(RUNS), help="precision lists, one export each")
    ap.add_argument("--scratch", help="folder for the deploy dirs (default: a temp dir beside the results, removed)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more arguments for vitdeploy export")
    args = ap.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="large_export.", dir=os.environ.get("TMPDIR", "/tmp")))
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for model in args.models:
            for precisions in args.runs:
                rec = run_one(model, precisions, scratch, args.extra)
                print(json.dumps(rec), flush=True)
                results.append(rec)
                shutil.rmtree(scratch / f"{model}.{precisions.replace(',', '_')}", ignore_errors=True)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    write_result("large_export", {
        "budget_gib": BUDGET_GIB, "cpu_count": os.cpu_count(),
        "note": "peak_rss_gib is the export child's own ru_maxrss (os.wait4); times are on a shared machine unless "
                "rerun on a quiet one", "runs": results,
    })


if __name__ == "__main__":
    main()
