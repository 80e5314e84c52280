"""The `vitdeploy` command line. Thin: parse, call the library, print. Every user error is one line, exit 2."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import click

from vitdeploy import __version__
from vitdeploy.errors import VitDeployError

MODEL_HELP = "a timm model name, a checkpoint file (.safetensors or torch), or a vitdeploy model dir"


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _out(text: str = "") -> None:
    click.echo(text)


def model_options(f):
    """--checkpoint / --arch / --pretrained, shared by every command that takes MODEL."""
    f = click.option("--pretrained", is_flag=True, help="load timm's pretrained weights (needs the model hub)")(f)
    f = click.option("--arch", metavar="NAME", help="timm architecture of a bare checkpoint file given as MODEL")(f)
    f = click.option("--checkpoint", metavar="FILE", help="weights for the timm MODEL name (.safetensors or torch file)")(f)
    return f


def _load(model: str, checkpoint: Optional[str], arch: Optional[str], pretrained: bool):
    from vitdeploy.models import load_model

    return load_model(model, checkpoint=checkpoint, arch=arch, pretrained=pretrained)


def _int_list(spec: str, what: str) -> list[int]:
    try:
        values = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise VitDeployError(f"{what} must be a comma-separated list of integers, got '{spec}'") from None
    if not values or any(v < 1 for v in values):
        raise VitDeployError(f"{what} must be integers >= 1, got '{spec}'")
    return values


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vitdeploy")
def cli() -> None:
    """Compress timm Vision Transformers and ship them: prune, export to ONNX, measure."""


# ------------------------------------------------------------------------------------------------ info
@cli.command()
@click.argument("model")
@model_options
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def info(model: str, checkpoint, arch, pretrained, as_json: bool) -> None:
    """Params, MACs (attention matmuls included) and per-block dims of MODEL."""
    from vitdeploy.models import block_table, count_macs, count_params

    loaded = _load(model, checkpoint, arch, pretrained)
    size = loaded.input_size
    rec = {
        "model": loaded.source, "base": loaded.arch.base, "input_size": list(size), "num_classes": loaded.num_classes,
        "params": count_params(loaded.model), "macs": count_macs(loaded.model, size), "blocks": block_table(loaded.arch),
    }
    if as_json:
        _out(json.dumps(rec, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model}: {rec['params'] / 1e6:.2f} M params, {rec['macs'] / 1e9:.3f} G MACs, input {tuple(size)}")
    for col in ("block", "heads", "qk dim", "v dim", "attn in", "mlp in", "mlp hidden", "low-rank"):
        table.add_column(col, justify="right")
    for b in rec["blocks"]:
        ranks = ", ".join(f"{k}:{v}" for k, v in b["ranks"].items()) or "-"
        table.add_row(*map(str, (b["block"], b["heads"], b["qk_head_dim"], b["v_head_dim"], b["attn_in"], b["mlp_in"], b["mlp_hidden"], ranks)))
    Console().print(table)


# ----------------------------------------------------------------------------------------------- train
@cli.command()
@click.argument("model")
@model_options
@click.option("--data", required=True, metavar="SPEC", help="digits | imagefolder:PATH")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="model dir to write")
@click.option("--epochs", default=40, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--weight-decay", default=0.05, show_default=True, type=click.FloatRange(min=0))
@click.option("--warmup-epochs", default=2.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--label-smoothing", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--augment", is_flag=True, help="training-time augmentation (off by default: 1-pixel shifts hurt 8x8 digits)")
@click.option("--seed", default=0, show_default=True, type=int)
def train(model, checkpoint, arch, pretrained, data, out, epochs, lr, batch_size, weight_decay, warmup_epochs,
          label_smoothing, augment, seed) -> None:
    """Train MODEL on SPEC (AdamW, cosine schedule, label smoothing) and write a model dir."""
    from vitdeploy.compress.pipeline import run_train
    from vitdeploy.compress.recipe import TrainCfg
    from vitdeploy.compress.train import seed_everything
    from vitdeploy.data import parse_data_spec

    parse_data_spec(data)
    seed_everything(seed)  # before the model exists, so a fresh model's initial weights are reproducible too
    loaded = _load(model, checkpoint, arch, pretrained)
    cfg = TrainCfg(epochs=epochs, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, batch_size=batch_size,
                   label_smoothing=label_smoothing, augment=augment)
    s = run_train(loaded, data, cfg, Path(out), seed=seed)
    _out(f"wrote {out}: val top-1 {100 * s['top1']:.2f} %, {s['params'] / 1e6:.3f} M params, {s['macs'] / 1e6:.1f} M MACs")


# -------------------------------------------------------------------------------------------- compress
@cli.command()
@click.argument("model")
@model_options
@click.option("--recipe", required=True, metavar="NAME_OR_YAML", help="a packaged recipe name or a YAML file")
@click.option("--data", metavar="SPEC", help="data for fine-tuning and accuracy (digits | imagefolder:PATH)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="model dir to write")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe field, e.g. prune.rate=0.5")
def compress(model, checkpoint, arch, pretrained, recipe, data, out, overrides) -> None:
    """Compress MODEL with a recipe; writes a model dir with compress.json."""
    from vitdeploy.compress.pipeline import run_compress
    from vitdeploy.compress.recipe import load_recipe, locate_recipe
    from vitdeploy.compress.train import seed_everything
    from vitdeploy.data import parse_data_spec

    rec = load_recipe(recipe, list(overrides))
    source = locate_recipe(recipe)[1]
    if data is not None:
        parse_data_spec(data)
    seed_everything(rec.seed)
    loaded = _load(model, checkpoint, arch, pretrained)
    r = run_compress(loaded, rec, data, Path(out), source)
    top = r["top1"]
    acc = "" if top["before"] is None else (
        f", top-1 {100 * top['before']:.2f} → {100 * top['pruned']:.2f} (pruned) → {100 * top['after']:.2f} % (fine-tuned)")
    _out(f"wrote {out}: params {r['params']['ratio']:.3f}×, MACs {r['macs']['ratio']:.3f}×{acc}; "
         f"pruned == masked within {r['equivalence']['max_abs_diff']:.1e}")


# ---------------------------------------------------------------------------------------------- export
@cli.command()
@click.argument("model")
@model_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="deploy dir to write")
@click.option("--precision", default="fp32", show_default=True, help="comma-separated precisions")
@click.option("--data", metavar="SPEC", help="real inputs for the parity check (default: the model's training data)")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (>= 17)")
@click.option("--static-batch", type=click.IntRange(min=1), help="bake this batch size in (default: dynamic batch)")
def export(model, checkpoint, arch, pretrained, out, precision, data, opset, static_batch) -> None:
    """Export MODEL to ONNX and check it against PyTorch on real inputs; writes export.json."""
    from vitdeploy.data import parse_data_spec
    from vitdeploy.deploy.pipeline import parse_precisions, run_export

    precisions = parse_precisions(precision)
    if data is not None:
        parse_data_spec(data)
    loaded = _load(model, checkpoint, arch, pretrained)
    r = run_export(loaded, Path(out), precisions, data=data, opset=opset, static_batch=static_batch)
    for a in r["artifacts"]:
        p = a["parity"]
        _out(f"wrote {Path(out) / a['file']}: {a['nodes']} nodes, max |Δ| {p['max_abs_diff']:.2e}, "
             f"cosine {p['cosine']:.6f}, top-1 agreement {100 * p['top1_agreement']:.1f} % ({r['parity_inputs']})")


# --------------------------------------------------------------------------------------------- profile
@cli.command()
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--backend", default="ort-cpu", show_default=True, help="comma-separated: ort-cpu, torch-cpu, ...")
@click.option("--batch", default="1,8", show_default=True, help="comma-separated batch sizes")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--iters", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="seconds per measurement instead of --iters")
@click.option("--threads", type=click.IntRange(min=1), help="pin intra-op threads (default: the backend's)")
@click.option("--arch", metavar="NAME", help="timm architecture of a bare checkpoint file given as ARTIFACT")
@click.option("--out", type=click.Path(dir_okay=False), help="write results as JSON")
def profile(artifacts, backend, batch, warmup, iters, duration, threads, arch, out) -> None:
    """Latency percentiles and throughput of each ARTIFACT (.onnx, deploy dir, or MODEL) per backend and batch."""
    from rich.console import Console

    from vitdeploy.bench.artifacts import resolve_artifacts
    from vitdeploy.bench.latency import profile_artifacts, results_table
    from vitdeploy.bench.runners import check_backend_available, parse_backends
    from vitdeploy.io import atomic_write_json

    backends = parse_backends(backend)
    for b in backends:
        check_backend_available(b)
    batches = _int_list(batch, "--batch")
    resolved = [a for spec in artifacts for a in resolve_artifacts(spec, arch)]
    items, sizes = [], {a.input_size for a in resolved}
    if len(sizes) > 1:
        raise VitDeployError(f"artifacts take different input sizes {sorted(sizes)}: profile them separately")
    for a in resolved:
        runnable = [b for b in backends if a.runs_on(b)]
        if not runnable:
            a.runner(backends[0])  # raises the one-line reason
        items += [(a.label, (lambda a=a, b=b: a.runner(b, threads))) for b in runnable]
    result = profile_artifacts(items, batches, warmup=warmup, iters=iters, duration=duration,
                               input_size=resolved[0].input_size, threads=threads)
    Console().print(results_table(result))
    if out:
        atomic_write_json(out, result)
        _out(f"wrote {out}")


# ------------------------------------------------------------------------------------------------ eval
@cli.command(name="eval")
@click.argument("artifact")
@click.option("--data", required=True, metavar="SPEC", help="digits | imagefolder:PATH (its val split)")
@click.option("--reference", metavar="ARTIFACT", help="compare logits with this artifact (agreement, cosine)")
@click.option("--backend", help="backend to run on (default: ort-cpu for ONNX, torch-cpu for models)")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--arch", metavar="NAME", help="timm architecture of a bare checkpoint file given as ARTIFACT")
@click.option("--out", type=click.Path(dir_okay=False), help="write results as JSON")
def eval_cmd(artifact, data, reference, backend, batch_size, arch, out) -> None:
    """Top-1 and top-5 of ARTIFACT on the val split of SPEC."""
    from vitdeploy.bench.accuracy import evaluate
    from vitdeploy.bench.artifacts import resolve_artifacts
    from vitdeploy.bench.runners import parse_backends
    from vitdeploy.data import load_dataset, make_loader, parse_data_spec
    from vitdeploy.io import atomic_write_json

    parse_data_spec(data)
    art = resolve_artifacts(artifact, arch)[0]
    ref = resolve_artifacts(reference, arch)[0] if reference else None
    pick = lambda a: parse_backends(backend)[0] if backend else ("ort-cpu" if a.kind == "onnx" else "torch-cpu")  # noqa: E731
    ds = load_dataset(data, "val", art.data_config)
    loader = make_loader(ds, batch_size)
    runner = art.runner(pick(art))
    ref_runner = ref.runner(pick(ref)) if ref else None
    r = evaluate(runner, loader, reference=ref_runner)
    rec = {"artifact": art.label, "backend": runner.name, "data": data, **r}
    if ref:
        rec["reference"] = ref.label
    msg = f"{art.label} [{runner.name}] on {data} val (n={r['n']}): top-1 {100 * r['top1']:.2f} %, top-5 {100 * r['top5']:.2f} %"
    if ref:
        msg += f"; vs {ref.label}: agreement {100 * r['top1_agreement']:.2f} %, cosine {r['cosine_mean']:.6f}"
    _out(msg)
    if out:
        atomic_write_json(out, rec)
        _out(f"wrote {out}")


# ---------------------------------------------------------------------------------------------- report
@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--profile", "profiles", multiple=True, type=click.Path(), help="profile JSON files to include")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for report.md and report.json")
def report(runs, profiles, out) -> None:
    """One table of every variant in RUNS (model dirs): params, MACs, top-1, latency, throughput."""
    from vitdeploy.bench.report import build_report

    build_report([Path(r) for r in runs], [Path(p) for p in profiles], Path(out))
    _out(f"wrote {Path(out) / 'report.md'}")


# ------------------------------------------------------------------------------------------------ main
def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: user errors become one line on stderr with exit 2; set VITDEPLOY_DEBUG=1 for tracebacks."""
    debug = bool(os.environ.get("VITDEPLOY_DEBUG"))
    try:
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
    sys.exit(rc if isinstance(rc, int) else 0)
