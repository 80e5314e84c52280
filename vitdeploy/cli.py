"""The `vitdeploy` command line. Thin: parse, call the Python API (`vitdeploy.api`), print. Every user error is one line, exit 2."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

import click

from vitdeploy import __version__, api
from vitdeploy.compression.methods import DECOMPOSITIONS
from vitdeploy.compression.recipe import available_recipes
from vitdeploy.deploy.targets import available_targets
from vitdeploy.errors import VitDeployError

MODEL_HELP = "a timm model name, a checkpoint file (.safetensors or torch), or a vitdeploy model dir"


def examples(*lines: str, extra: str = "") -> str:
    """The epilog every command's --help ends with: real invocations (tests/test_reliability.py parses each one), then
    `extra` (the packaged recipes or targets)."""
    text = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
    return text + (f"\n\n\b\n{extra}" if extra else "")


def _packaged(what: str, names: list[str]) -> str:
    return f"Packaged {what}: {', '.join(names)} (or a YAML file path)."


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _out(text: str = "") -> None:
    from vitdeploy import distributed

    if distributed.is_main():
        click.echo(text)


def model_options(f):
    """--checkpoint / --arch / --pretrained, shared by every command that takes MODEL."""
    f = click.option("--pretrained", is_flag=True, help="load timm's pretrained weights (needs the model hub)")(f)
    f = click.option("--arch", metavar="NAME", help="timm architecture of a bare checkpoint file given as MODEL")(f)
    f = click.option("--checkpoint", metavar="FILE", help="weights for the timm MODEL name (.safetensors or torch file)")(f)
    return f


def _names(spec: str, what: str, allow_none: bool = False) -> list[str]:
    """"a, b" -> ["a", "b"]; an empty item (",", "a,,b") is refused rather than dropped, and so is an empty list
    unless `allow_none` (an option whose default is the empty string)."""
    if allow_none and not spec.strip():
        return []
    names = [s.strip() for s in spec.split(",")]
    if not any(names):
        raise VitDeployError(f"{what} must list at least one name, got '{spec}'")
    if not all(names):
        raise VitDeployError(f"{what} has an empty item in '{spec}'")
    return names


def _int_list(spec: str, what: str) -> list[int]:
    try:
        values = [int(s) for s in _names(spec, what)]
    except ValueError:
        raise VitDeployError(f"{what} must be a comma-separated list of integers, got '{spec}'") from None
    if not values or any(v < 1 for v in values):
        raise VitDeployError(f"{what} must be integers >= 1, got '{spec}'")
    return values


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=examples(
    "vitdeploy train vit_digits --data digits --out runs/dense",
    "vitdeploy compress runs/dense --recipe vtp-40 --data digits --out runs/vtp40"))
@click.version_option(__version__, prog_name="vitdeploy")
def cli() -> None:
    """Compress timm Vision Transformers and ship them: prune, export to ONNX, measure."""


# ------------------------------------------------------------------------------------------------ info
@cli.command(epilog=examples("vitdeploy info vit_digits", "vitdeploy info runs/vtp40 --json"))
@click.argument("model")
@model_options
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def info(model: str, checkpoint, arch, pretrained, as_json: bool) -> None:
    """Params, MACs (attention matmuls included) and per-block dims of MODEL."""
    rec = api.info(model, checkpoint=checkpoint, arch=arch, pretrained=pretrained)
    size = rec["input_size"]
    if as_json:
        _out(json.dumps(rec, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model}: {rec['params'] / 1e6:.2f} M params, {rec['macs'] / 1e9:.3f} G MACs, input {tuple(size)}")
    for col in ("block", "width", "heads", "qk dim", "v dim", "attn in", "mlp in", "mlp hidden", "low-rank"):
        table.add_column(col, justify="right")
    for b in rec["blocks"]:
        ranks = ", ".join(f"{k}:{v}" for k, v in b["ranks"].items()) or "-"
        table.add_row(*map(str, (b["block"], b["width"], b["heads"], b["qk_head_dim"], b["v_head_dim"], b["attn_in"],
                                 b["mlp_in"], b["mlp_hidden"], ranks)))
    Console().print(table)


# ----------------------------------------------------------------------------------------------- train
@cli.command(epilog=examples(
    "vitdeploy train vit_digits --data digits --epochs 20 --out runs/dense",
    "vitdeploy train runs/dense --data imagefolder:/data/flowers --new-head --skip-bad-images --out runs/flowers"))
@click.argument("model")
@model_options
@click.option("--data", required=True, metavar="SPEC", help="digits | fashion-mnist[:PATH] | imagefolder:PATH")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="model dir to write")
@click.option("--epochs", type=click.IntRange(min=1), help="default: 40, or the model's own (vit_fashion)")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="default: 2e-3, or the model's own")
@click.option("--batch-size", type=click.IntRange(min=1), help="default: 64, or the model's own")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="default: 0.05")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), help="default: 2, or the model's own")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), help="default: 0.1")
@click.option("--augment/--no-augment", default=None,
              help="training-time augmentation (default: off: 1-pixel shifts hurt 8x8 digits, and crops cost vit_fashion's short schedule 2-4 points)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="continue from the checkpoints in OUT.ckpt/ after a crash or kill")
@click.option("--checkpoint-every", default=0, show_default=True, type=click.IntRange(min=0), metavar="STEPS",
              help="checkpoint every STEPS optimiser steps as well as at epoch ends")
@click.option("--new-head", is_flag=True, help="give a trained MODEL a fresh head when the data has other classes "
              "(a fresh timm model gets one anyway)")
@click.option("--skip-bad-images", is_flag=True, help="leave corrupt images of an image folder out (counted and "
              "reported) instead of stopping at the first one")
def train(model, checkpoint, arch, pretrained, data, out, epochs, lr, batch_size, weight_decay, warmup_epochs,
          label_smoothing, augment, seed, resume, checkpoint_every, new_head, skip_bad_images) -> None:
    """Train MODEL on SPEC (AdamW, cosine schedule, label smoothing) and write a model dir.

    Checkpoints are kept in OUT.ckpt/ until OUT is written; under torchrun the model trains with DDP and
    --batch-size is the global batch."""
    r = api.train(model, data, out, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                  warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, augment=augment, seed=seed,
                  resume=resume, checkpoint_every=checkpoint_every, new_head=new_head,
                  skip_bad_images=skip_bad_images, checkpoint=checkpoint, arch=arch, pretrained=pretrained)
    if skip_bad_images:
        _out(_skipped_note(r.record.get("skipped_images", [])))
    _out(f"wrote {out}: val top-1 {100 * r.top1:.2f} %, {r.params / 1e6:.3f} M params, {r.macs / 1e6:.1f} M MACs")


def _skipped_note(files: list[str]) -> str:
    if not files:
        return "--skip-bad-images: every image was readable"
    return f"--skip-bad-images: left out {len(files)} unreadable image(s), e.g. {files[0]}"


# -------------------------------------------------------------------------------------------- compress
@cli.command(epilog=examples(
    "vitdeploy compress runs/dense --recipe vtp-40 --data digits --out runs/vtp40",
    "vitdeploy compress vit_digits --recipe mlp-magnitude --set prune.rate=0.5 --out runs/mlp50",
    extra=_packaged("recipes", available_recipes())))
@click.argument("model")
@model_options
@click.option("--recipe", required=True, metavar="NAME_OR_YAML", help="a packaged recipe name or a YAML file")
@click.option("--data", metavar="SPEC", help="data for fine-tuning and accuracy (digits | imagefolder:PATH)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="model dir to write")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe field, e.g. prune.rate=0.5")
@click.option("--calib-images", type=click.IntRange(min=1), metavar="N",
              help="MCF calibration images (sets mcf.calib_images; default 1024 or the whole train split)")
@click.option("--resume", is_flag=True, help="continue from the checkpoints in OUT.ckpt/ after a crash or kill")
@click.option("--latency-table", type=click.Path(dir_okay=False), metavar="FILE",
              help="plan a latency budget with this table (vitdeploy latency-table) instead of measuring one first")
def compress(model, checkpoint, arch, pretrained, recipe, data, out, overrides, calib_images, resume,
             latency_table) -> None:
    """Compress MODEL with a recipe; writes a model dir with compress.json.

    Checkpoints are kept in OUT.ckpt/ until OUT is written; under torchrun training phases run with DDP."""
    r = api.compress(model, recipe, out, data=data, overrides=list(overrides), calib_images=calib_images,
                     resume=resume, latency_table=latency_table, checkpoint=checkpoint, arch=arch,
                     pretrained=pretrained).record
    _print_kept(r["kept"], r["dense_blocks"])
    if r.get("budget"):
        from vitdeploy.runtime.latency_table import describe_budget

        for line in describe_budget(r["budget"]):
            _out(line)
    acc = " → ".join(f"{100 * s['top1']:.2f} ({s['stage']})" for s in r["stages"] if s["top1"] is not None)
    red = r["reduction"]
    _out(f"wrote {out}: rate {red['rate']:.2f} removed {100 * red['params']:.1f} % of params and {100 * red['macs']:.1f} % "
         f"of MACs{'; top-1 % ' + acc if acc else ''}; pruned == masked within {r['equivalence']['max_abs_diff']:.1e}")


# ------------------------------------------------------------------------------------------ latency-table
@cli.command("latency-table", epilog=examples(
    "vitdeploy latency-table deit_small_patch16_224 --backend ort-cpu --batch 8 --threads 2 --out deit_b8.json",
    "vitdeploy latency-table --from-trtexec orin_kit/ --out orin_b1.json"))
@click.argument("model", required=False)
@model_options
@click.option("--backend", default="ort-cpu", show_default=True,
              type=click.Choice(["ort-cpu", "torch-cpu", "torch-cuda", "trt"]),
              help="where the units are timed (trt: write a kit of unit graphs and a trtexec script for the device)")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", type=click.IntRange(min=1), help="intra-op threads on CPU backends (default: physical cores)")
@click.option("--from-trtexec", "kit", type=click.Path(file_okay=False), metavar="DIR",
              help="read a device kit whose time_units.sh has run and write its table")
@click.option("--out", required=True, type=click.Path(), help="table JSON to write (a folder for --backend trt)")
def latency_table(model, checkpoint, arch, pretrained, backend, batch, threads, kit, out) -> None:
    """Time each prunable unit of MODEL (attention, MLP, the fixed part) at grid widths on a backend: the table a
    latency budget (recipe latency-50) plans with. With --backend trt it writes a kit of unit graphs and
    time_units.sh (trtexec) to run on the device; --from-trtexec DIR then reads the kit's times into a table."""
    r = api.latency_table(model, out, backend=backend, batch=batch, threads=threads, from_trtexec=kit,
                          checkpoint=checkpoint, arch=arch, pretrained=pretrained)
    _out(r)


def _print_kept(kept: list[dict], dense: list[dict]) -> None:
    """Kept / dense dims per block and site."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kept dims per block (kept/dense)")
    cols = ("width", "heads", "qk_head_dim", "v_head_dim", "attn_in", "mlp_in", "mlp_hidden")
    for col in ("block", *cols):
        table.add_column(col.replace("_", " "), justify="right")
    for k, d in zip(kept, dense):
        table.add_row(str(k["block"]), *(str(k.get(c)) if k.get(c) == d.get(c) else f"{k.get(c)}/{d.get(c)}"
                                         for c in cols))
    Console().print(table)


# ---------------------------------------------------------------------------------------------- export
@cli.command(epilog=examples(
    "vitdeploy export runs/vtp40 --precision fp32,fp16,int8 --calib-data digits --target cpu --out runs/vtp40/deploy",
    "vitdeploy export runs/vtp40 --precision fp16,int8 --int8-max-drop 0.5 --calib-data digits "
    "--target jetson-orin-nano --out runs/vtp40/orin",
    extra=_packaged("targets", available_targets())))
@click.argument("model")
@model_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="deploy dir to write")
@click.option("--precision", metavar="LIST", help="comma-separated: fp32, fp16, int8 (default: the target's, else fp32)")
@click.option("--data", metavar="SPEC", help="real inputs for the parity check (default: the model's training data)")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (>= 17)")
@click.option("--static-batch", type=click.IntRange(min=1), help="bake this batch size in (default: dynamic batch)")
@click.option("--io-dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="input/output type of the FP16 graph (fp32: Casts at the boundary)")
@click.option("--calib-data", metavar="SPEC", help="INT8 calibration images (default: the model's training data)")
@click.option("--calib-images", default=256, show_default=True, type=click.IntRange(min=1),
              help="INT8 calibration images drawn from the train split (all of them if fewer)")
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy", "auto"]),
              help="INT8 activation range calibration (default: minmax; auto, chosen per tensor, with a plan)")
@click.option("--int8-attention", is_flag=True, help="also quantize the attention matmuls (Q·Kᵀ, P·V)")
@click.option("--exclude", metavar="NAME,...", default="", help="layers to keep out of INT8, e.g. head,blocks.0.mlp.fc1")
@click.option("--int8-max-drop", type=float, metavar="POINTS",
              help="plan INT8 per layer: at most this top-1 drop vs FP32 on held-out images")
@click.option("--int8-min-agreement", type=float, metavar="A",
              help="plan INT8 per layer: at least this top-1 agreement with FP32 (0-1) on held-out images")
@click.option("--int8-plan-images", default=1000, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="held-out images the INT8 plan is measured on (never the test split)")
@click.option("--target", metavar="NAME_OR_YAML", help="deployment target: adds build_engines.sh, triton/ and engines")
def export(model, checkpoint, arch, pretrained, out, precision, data, opset, static_batch, io_dtype, calib_data,
           calib_images, calib_method, int8_attention, exclude, int8_max_drop, int8_min_agreement, int8_plan_images,
           target) -> None:
    """Export MODEL to clean FP32/FP16/INT8 ONNX graphs checked against PyTorch on real inputs; writes export.json."""
    r = api.export(model, out, precisions=precision, data=data, opset=opset, static_batch=static_batch,
                   io_dtype=io_dtype, calib_data=calib_data, calib_images=calib_images, calib_method=calib_method,
                   int8_attention=int8_attention, exclude=tuple(_names(exclude, "--exclude", allow_none=True)), target=target,
                   int8_max_drop=int8_max_drop, int8_min_agreement=int8_min_agreement,
                   int8_plan_images=int8_plan_images,
                   release_model=True, checkpoint=checkpoint, arch=arch, pretrained=pretrained).record
    for a in r["artifacts"]:
        p = a["parity"]
        _out(f"wrote {Path(out) / a['file']}: {a['nodes']} nodes, max |Δ| {p['max_abs_diff']:.2e}, "
             f"cosine {p['cosine']:.6f}, top-1 agreement {100 * p['top1_agreement']:.1f} % ({r['parity_inputs']})")
    plan = (r.get("int8") or {}).get("plan")
    if plan:
        p, full = plan["planned"], plan["full"]
        _out(f"int8 plan: {p['layers']} of {full['layers']} layers in INT8, top-1 drop {p['drop_points']:.2f} points, "
             f"agreement {100 * p['agreement']:.1f} % on {plan['held_out']['images']} held-out images (all layers "
             f"INT8: drop {full['drop_points']:.2f}); table {Path(out) / r['int8']['table']}")
    if "tensorrt" in r:
        trt = r["tensorrt"]
        engines = [e["file"] for e in r.get("engines", []) if "error" not in e]
        _out(f"target {r['target']['name']}: {len(engines)} TensorRT engine(s)"
             f"{'' if trt['reason'] is None else ' (' + trt['reason'] + ')'}; wrote {Path(out) / r['build_script']} "
             f"and {Path(out) / r['triton']['repository']}/")


# --------------------------------------------------------------------------------------------- profile
@cli.command(epilog=examples(
    "vitdeploy profile runs/dense/deploy runs/vtp40/deploy --backend ort-cpu --batch 1,8 --out runs/profile.json",
    "vitdeploy profile runs/vtp40/deploy/model.int8.onnx --batch 1 --duration 5"))
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--backend", default="ort-cpu", show_default=True, help="comma-separated: ort-cpu, torch-cpu, trt, ...")
@click.option("--batch", default="1,8", show_default=True, help="comma-separated batch sizes")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--iters", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="seconds per measurement instead of --iters")
@click.option("--threads", type=click.IntRange(min=1), help="pin intra-op threads (default: the backend's)")
@click.option("--op-profile", "op_top", type=click.IntRange(min=0), default=0, metavar="N",
              help="after each timed run, profile ONNX Runtime ops in a separate session and keep the top N")
@click.option("--leak-check", "leak_runs", type=click.IntRange(min=0), default=0, metavar="RUNS",
              help="after each timed run, record resident memory growth over RUNS more calls (e.g. 1000)")
@click.option("--reference", metavar="ARTIFACT", help="the artifact the others are compared with: one of ARTIFACTS "
              "(a deploy dir means its fp32 graph) or a graph inside one (default: the first)")
@click.option("--rounds", type=click.IntRange(min=2), metavar="N",
              help="interleaved rounds; each times every artifact for --iters/N calls (default: 20, at most --iters)")
@click.option("--sequential", is_flag=True, help="time the artifacts one after another instead of interleaved "
              "(speedups then have no interval: drift of the machine lands on single artifacts)")
@click.option("--arch", metavar="NAME", help="timm architecture of a bare checkpoint file given as ARTIFACT")
@click.option("--out", type=click.Path(dir_okay=False), help="write results as JSON")
def profile(artifacts, backend, batch, warmup, iters, duration, threads, op_top, leak_runs, reference, rounds,
            sequential, arch, out) -> None:
    """Latency percentiles and throughput of each ARTIFACT (.onnx, engine, deploy dir, or MODEL) per backend and batch.

    The artifacts are timed interleaved: all are warmed up, then timed in rounds, each round running every artifact
    for a short block in a rotating order, so drift of the machine hits all alike. Each artifact gets a speedup
    against the reference (median of per-round ratios, with a 95 % bootstrap interval) and a verdict: faster,
    slower, or tied (not distinguishable at this noise)."""
    from rich.console import Console

    from vitdeploy.bench.latency import op_profile_table, results_table, summary_lines
    from vitdeploy.io import atomic_write_json

    if out:
        api._guard_out(out, paths=list(artifacts))  # before minutes of timing, not after
    r = api.profile(list(artifacts), backend=backend, batch=_int_list(batch, "--batch"), warmup=warmup, iters=iters,
                    duration=duration, threads=threads, op_profile=op_top, leak_runs=leak_runs, arch=arch,
                    reference=reference, rounds=rounds, sequential=sequential)
    console = Console()
    console.print(results_table(r.record))
    for line in summary_lines(r.record):
        _out(line)
    ops = op_profile_table(r.record)
    if ops is not None:
        console.print(ops)
    for note in r.notes:
        _out(note)
    if out:
        atomic_write_json(out, r.record)
        _out(f"wrote {out}")


# ------------------------------------------------------------------------------------------------ eval
@cli.command(name="eval", epilog=examples(
    "vitdeploy eval runs/vtp40/deploy --data digits --reference runs/dense/deploy --out 'runs/vtp40/eval.{precision}.json'",
    "vitdeploy eval runs/vtp40 --data imagefolder:/data/flowers/val --skip-bad-images"))
@click.argument("artifact")
@click.option("--data", required=True, metavar="SPEC", help="digits | fashion-mnist[:PATH] | imagefolder:PATH")
@click.option("--split", type=click.Choice(["val", "test"]), help="which split to measure (default: test where the "
              "dataset has an official test set, as fashion-mnist does, else val)")
@click.option("--reference", metavar="ARTIFACT", help="compare logits with this artifact (agreement, cosine); "
              "a deploy dir gives its fp32 graph")
@click.option("--backend", help="backend to run on (default: ort-cpu for ONNX graphs, trt for engines, torch-cpu for "
              "models); for a deploy dir, every artifact this backend runs")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--arch", metavar="NAME", help="timm architecture of a bare checkpoint file given as ARTIFACT")
@click.option("--out", metavar="FILE.json", help="write results as JSON; for several artifacts put {precision} in the "
              "name, e.g. RUN/eval.{precision}.json")
@click.option("--skip-bad-images", is_flag=True, help="leave corrupt images of an image folder out (counted, reported "
              "and listed in the JSON) instead of refusing the folder")
def eval_cmd(artifact, data, split, reference, backend, batch_size, arch, out, skip_bad_images) -> None:
    """Top-1 and top-5 of ARTIFACT (every graph of a deploy dir) on a split of SPEC (test where it has one, else val)."""
    run = api.evaluate(artifact, data, split=split, reference=reference, backend=backend, batch_size=batch_size,
                       arch=arch, out=out, skip_bad_images=skip_bad_images)
    for note in run.notes:
        _out(note)
    if skip_bad_images and run.results:
        _out(_skipped_note(run.results[0].record.get("skipped_images", [])))
    for r in run.results:
        rec = r.record
        msg = (f"{rec['artifact']} [{rec['backend']}, {rec['precision']}] on {data} {rec['split']} (n={rec['n']}): "
               f"top-1 {100 * rec['top1']:.2f} %, top-5 {100 * rec['top5']:.2f} %")
        if run.reference:
            msg += f"; vs {run.reference}: agreement {100 * rec['top1_agreement']:.2f} %, cosine {rec['cosine_mean']:.6f}"
        _out(msg)
    for r in run.results:
        if r.path is not None:
            _out(f"wrote {r.path}")


# ---------------------------------------------------------------------------------------------- report
@cli.command(epilog=examples("vitdeploy report runs/dense runs/vtp40 --profile runs/profile.json --out runs/report"))
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--profile", "profiles", multiple=True, type=click.Path(), help="profile JSON files to include "
              "(profile*.json inside a run dir are read anyway)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for report.md, report.json and plots")
@click.option("--backend", help="backend the shipping advice and Pareto chart use (default: the best-covered one)")
@click.option("--batch", type=click.IntRange(min=1), help="batch size the advice and chart use (default: as --backend)")
def report(runs, profiles, out, backend, batch) -> None:
    """Every variant in RUNS (model dirs) side by side, the one to ship per latency budget, and plots."""
    r = api.report(list(runs), out, profiles=list(profiles), backend=backend, batch=batch)
    _out(f"wrote {Path(out) / 'report.md'}, report.json" + "".join(f", {p}" for p in r.plots))


# ----------------------------------------------------------------------------------------------- study
@cli.group(epilog=examples("vitdeploy study decomposition runs/dense --data digits --out runs/study",
                           "vitdeploy study hybrid runs/dense --data digits --out runs/sweep"))
def study() -> None:
    """Method comparisons from the papers: decomposition methods after VTP, and the hybrid recipe's sweep."""


def _float_list(spec: str, what: str) -> list[float]:
    items = _names(spec, what)
    try:
        values = [float(s) for s in items]
    except ValueError:
        raise VitDeployError(f"{what} must be a comma-separated list of numbers, got '{spec}'") from None
    if not all(math.isfinite(v) for v in values):
        raise VitDeployError(f"{what} must be finite numbers, got '{spec}'")
    return values


@study.command(epilog=examples(
    "vitdeploy study decomposition runs/dense --data digits --out runs/study",
    "vitdeploy study decomposition runs/dense --data digits --methods svd,lu --finetune-epochs 1 --out runs/study-lu"))
@click.argument("model")
@model_options
@click.option("--data", required=True, metavar="SPEC", help="digits | imagefolder:PATH")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for study.json, study.md, study.png")
@click.option("--recipe", default="vtp-svd", show_default=True, metavar="NAME_OR_YAML",
              help="VTP settings, layers and rank rule (its decompose.method is replaced by each method)")
@click.option("--methods", default=",".join(DECOMPOSITIONS), show_default=True, metavar="LIST")
@click.option("--finetune-epochs", default=2, show_default=True, type=click.IntRange(min=0),
              help="length of the short fine-tune every variant gets")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe field")
def decomposition(model, checkpoint, arch, pretrained, data, out, recipe, methods, finetune_epochs, overrides) -> None:
    """VTP, then VTP + SVD / QR (4 variants) / LU at equal ranks, before and after a short fine-tune."""
    r = api.study_decomposition(model, data, out, recipe=recipe, methods=_names(methods, "--methods"),
                                finetune_epochs=finetune_epochs, overrides=list(overrides), checkpoint=checkpoint,
                                arch=arch, pretrained=pretrained)
    for row in r["rows"]:
        _out(f"{row['label']:<30} {row['params'] / 1e6:8.3f} M params {row['macs'] / 1e6:9.1f} M MACs  top-1 "
             f"{100 * row['top1_before_finetune']:.2f} → {100 * row['top1_after_finetune']:.2f} %")
    _out(f"wrote {Path(out) / 'study.json'}, study.md, {r['plot']}")


@study.command(epilog=examples(
    "vitdeploy study hybrid runs/dense --data digits --out runs/sweep",
    "vitdeploy study hybrid runs/dense --data digits --ranks 0.5 --rates 0.2,0.3 --out runs/sweep-small"))
@click.argument("model")
@model_options
@click.option("--data", required=True, metavar="SPEC", help="digits | imagefolder:PATH")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for sweep.json, sweep.md, sweep.png")
@click.option("--ranks", default="0.25,0.5", show_default=True, metavar="LIST",
              help="attention ranks as fractions of min(out, in) (decompose.ratio)")
@click.option("--rates", default="0.1,0.2,0.3", show_default=True, metavar="LIST", help="MLP pruning rates")
@click.option("--recipe", default="hybrid", show_default=True, metavar="NAME_OR_YAML")
@click.option("--vtp-recipe", default="vtp-40", show_default=True, metavar="NAME_OR_YAML",
              help="VTP-alone baseline (its rate is searched to match each hybrid point's params)")
@click.option("--finetune-epochs", type=click.IntRange(min=0), help="fine-tune length for every point (default: the recipe's)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a field of --recipe")
def hybrid(model, checkpoint, arch, pretrained, data, out, ranks, rates, recipe, vtp_recipe, finetune_epochs,
           overrides) -> None:
    """Sweep the hybrid recipe (attention rank × MLP rate) and draw its accuracy/params frontier beside VTP alone."""
    r = api.study_hybrid(model, data, out, ranks=_float_list(ranks, "--ranks"), rates=_float_list(rates, "--rates"),
                         recipe=recipe, vtp_recipe=vtp_recipe, finetune_epochs=finetune_epochs,
                         overrides=list(overrides), checkpoint=checkpoint, arch=arch, pretrained=pretrained)
    for p in r["pairs"]:
        _out(f"hybrid rank {p['rank_ratio']:g} MLP rate {p['mlp_rate']:g}: {p['hybrid_params'] / 1e6:.3f} M params, "
             f"top-1 {100 * p['hybrid_top1']:.2f} %; VTP rate {p['vtp_rate']:g}: {p['vtp_params'] / 1e6:.3f} M, "
             f"{100 * p['vtp_top1']:.2f} % ({p['hybrid_minus_vtp_points']:+.2f} points)")
    _out(f"wrote {Path(out) / 'sweep.json'}, sweep.md, {r['plot']}")


# ------------------------------------------------------------------------------------------------ main
def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: user errors become one line on stderr with exit 2; set VITDEPLOY_DEBUG=1 for tracebacks."""
    from vitdeploy import distributed

    debug = bool(os.environ.get("VITDEPLOY_DEBUG"))
    try:
        distributed.init_from_env()  # under torchrun: join the process group (gloo on CPU, NCCL on GPUs)
        rc = cli.main(args=argv, prog_name="vitdeploy", standalone_mode=False)
    except VitDeployError as e:
        if debug:
            raise
        click.echo(f"error: {_one_line(e)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        if debug:
            raise
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code if e.exit_code else 2)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug, not a user error: still one line, with a way to see more
        if debug:
            raise
        click.echo(f"error: internal error ({type(e).__name__}: {_one_line(e)[:300]}); rerun with VITDEPLOY_DEBUG=1 for the traceback", err=True)
        sys.exit(1)
    distributed.shutdown()
    sys.exit(rc if isinstance(rc, int) else 0)
