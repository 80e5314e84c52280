"""Latency tables: each prunable unit of a ViT timed on a backend at grid widths, and whole models timed against
each other, for planning to a latency budget (`compression/budget.py` plans; this module measures).

Units. A block is two units: attention (norm1, qkv, attention, proj, layer scale, residual add) and MLP (norm2,
fc1, GELU, fc2, layer scale, residual add); the fixed part is the model with no blocks (patch embedding, tokens,
final norm, head). Each is cut from the model itself (one block of a copy, sliced to the widths with the same
surgery as pruning), so it is the code that runs after pruning. On onnxruntime each unit is traced to its own ONNX
graph and run in its own session; on torch it is called as a module. A graph that only passes the tokens through
is timed at every residual width too: the per-call overhead of a sub-graph (the session call, copying the tokens in
and out), which a whole model pays once, so it is taken out of every unit.

Timing is interleaved: every unit at every width is warmed up, then timed in rounds, each round running every unit
for a short block of calls in an order that rotates, so a slow spell of the machine lands on all of them alike;
each unit's figure is the median of all its calls. Widths off the grid are timed in the same run and compared with
the interpolation (`checks`): the interpolation error, measured. So are two whole models: the dense one (the
`anchor`, which the units are scaled to) and one at the middle of every grid axis (the `probe`): the table's error
on a whole model, dense and pruned, free of the machine's drift.

TensorRT: `write_device_kit` writes the unit graphs (FP16) and a script that times each with trtexec on the
device; `table_from_trtexec` reads the times back into a table (`--latency-table FILE` plans with it).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import shlex
import tempfile
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_write_json, atomic_write_text
from vitdeploy.models.surgery import attention_dims, residual_heads, slice_attention, slice_embed, slice_mlp
from vitdeploy.progress import make_progress
from vitdeploy.runtime.host import host_info, physical_cores
from vitdeploy.runtime.registry import check_backend_available
from vitdeploy.runtime.trace import trace_to_onnx

TABLE_BACKENDS = ("ort-cpu", "torch-cpu", "torch-cuda")
UNIT_INPUT, UNIT_OUTPUT = "tokens", "out"
GRID = {"widths": 5, "qk": 5, "v": 5, "hidden": 6}  # grid points per axis (ends included)
TABLE_FORMAT = 1


# ---------------------------------------------------------------------------------------- shapes and tables
@dataclass(frozen=True)
class Dims:
    """The dense model's shape, as the cost models see it."""
    embed: int  # residual width
    heads: int
    qk: int  # q/k dims per head
    v: int  # v dims per head
    hidden: int  # MLP hidden dims
    depth: int
    tokens: int  # tokens entering the blocks
    patch: int  # inputs per patch (channels * patch area)
    patches: int
    classes: int  # outputs of every head that reads the residual stream


def dense_dims(model: nn.Module) -> Dims:
    """The shape of a dense (uniform) timm ViT; one line naming what is not when the blocks differ."""
    shapes = {shape_of_block(b) for b in model.blocks}
    heads = {attention_dims(b.attn)["num_heads"] for b in model.blocks}
    if len(shapes) != 1 or len(heads) != 1:
        raise VitDeployError("a budget plan starts from a model whose blocks all have one shape (a dense model); "
                             "this one is already pruned or mixed")
    qk, v, hidden = shapes.pop()
    return Dims(embed=int(model.embed_dim), heads=heads.pop(), qk=qk, v=v, hidden=hidden, depth=len(model.blocks),
                tokens=int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 0)),
                patch=int(model.patch_embed.proj.weight[0].numel()), patches=int(model.patch_embed.num_patches),
                classes=sum(int(h.out_features) for h in residual_heads(model)))


def shape_of_block(blk: nn.Module) -> tuple[int, int, int]:
    d = attention_dims(blk.attn)
    return int(d["qk_head_dim"]), int(d["v_head_dim"]), int(blk.mlp.fc1.out_features)


def _bracket(grid: Sequence[int], q: float, what: str) -> tuple[int, int, float]:
    """Indices (i, j) of the grid values around q and the weight of j (grid ascending)."""
    g = np.asarray(grid, dtype=np.float64)
    if q < g[0] - 1e-9 or q > g[-1] + 1e-9:
        raise VitDeployError(f"the latency table has no {what} of {q:g} (it covers {int(g[0])}..{int(g[-1])}); "
                             "measure a table for this model")
    j = int(np.searchsorted(g, q))
    if j == 0:
        return 0, 0, 0.0
    if j >= len(g):
        return len(g) - 1, len(g) - 1, 0.0
    i = j - 1
    return i, j, float((q - g[i]) / (g[j] - g[i]))


@dataclass
class LatencyTable:
    """Measured ms per call of each unit at grid widths, interpolated (multilinearly) in between.

    `attn_ms[wi][qi][vi]`, `mlp_ms[wi][hi]`, `fixed_ms[wi]` are at `widths[wi]`, `qk[qi]`, `v[vi]`, `hidden[hi]`, with the
    per-call overhead of a sub-graph (`overhead[wi]`: a graph that only passes the tokens through) already taken
    out of the units; `fixed` keeps it, since a whole model pays it once. `checks` are widths off the grid timed in
    the same run: the interpolation error, measured. `anchor` is the whole dense model timed in the same run as the
    units: its measured ms, the units' raw sum for it and that sum's error (what the table misses of a whole model,
    free of the machine's drift). `scale` multiplies every unit (anchor over raw sum, so the dense model is
    predicted at its measured time; 1.0 for an uncalibrated table). `probe` is a second whole model, every width
    at the middle of its grid axis, timed in the same run: `fraction_error` is the table's predicted fraction of
    dense for it over its measured fraction, minus 1 (the table's error on a pruned shape, free of drift; a two-point
    line through anchor and probe was tried as the calibration and dropped: on vit_fashion it moved other shapes'
    predictions further off, because the error depends on which widths are cut, not on the size alone)."""
    backend: str
    batch: int
    threads: Optional[int]
    dims: dict
    widths: list
    qk: list
    v: list
    hidden: list
    attn_ms: list
    mlp_ms: list
    fixed_ms: list
    overhead: list = field(default_factory=list)
    checks: list = field(default_factory=list)
    anchor: dict = field(default_factory=dict)
    probe: dict = field(default_factory=dict)
    scale: float = 1.0
    host: dict = field(default_factory=dict)
    model: str = ""
    precision: str = "fp32"
    source: str = "measured"
    unit: str = "ms"
    format: int = TABLE_FORMAT

    def __post_init__(self) -> None:
        self._attn = np.asarray(self.attn_ms, dtype=np.float64)
        self._mlp = np.asarray(self.mlp_ms, dtype=np.float64)
        self._fixed = np.asarray(self.fixed_ms, dtype=np.float64)
        want = (len(self.widths), len(self.qk), len(self.v))
        if self._attn.shape != want or self._mlp.shape != (len(self.widths), len(self.hidden)) \
                or self._fixed.shape != (len(self.widths),):
            raise VitDeployError("latency table: the timings do not match its grid (attn_ms must be widths x qk x v, "
                                 "mlp_ms widths x hidden, fixed_ms one per width)")
        for name in ("widths", "qk", "v", "hidden"):
            g = getattr(self, name)
            if not g or any(b <= a for a, b in zip(g, g[1:])):
                raise VitDeployError(f"latency table: '{name}' must be a non-empty ascending list of widths")
        for arr, name in ((self._attn, "attn_ms"), (self._mlp, "mlp_ms"), (self._fixed, "fixed_ms")):
            if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise VitDeployError(f"latency table: '{name}' holds a negative or non-finite time")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise VitDeployError("latency table: 'scale' must be a positive number")

    def fixed(self, w: int) -> float:
        i, j, t = _bracket(self.widths, w, "residual width")
        return self.scale * float((1 - t) * self._fixed[i] + t * self._fixed[j])

    def attn(self, w: int, qk: int, v: int) -> float:
        (wi, wj, wt), (qi, qj, qt), (vi, vj, vt) = (_bracket(self.widths, w, "residual width"),
                                                     _bracket(self.qk, qk, "q/k head dim"),
                                                     _bracket(self.v, v, "v head dim"))
        total = 0.0
        for a, ta in ((wi, 1 - wt), (wj, wt)):
            for b, tb in ((qi, 1 - qt), (qj, qt)):
                for c, tc in ((vi, 1 - vt), (vj, vt)):
                    total += ta * tb * tc * self._attn[a, b, c]
        return self.scale * float(total)

    def mlp(self, w: int, hidden: int) -> float:
        (wi, wj, wt), (hi, hj, ht) = _bracket(self.widths, w, "residual width"), _bracket(self.hidden, hidden,
                                                                                           "MLP hidden width")
        return self.scale * float((1 - wt) * ((1 - ht) * self._mlp[wi, hi] + ht * self._mlp[wi, hj])
                                  + wt * ((1 - ht) * self._mlp[wj, hi] + ht * self._mlp[wj, hj]))

    def uniform_ms(self, w: int, qk: int, v: int, hidden: int) -> float:
        """The prediction for a whole model with every block at one shape."""
        return self.fixed(w) + self.dims["depth"] * (self.attn(w, qk, v) + self.mlp(w, hidden))

    def dense_ms(self) -> float:
        """The (calibrated) prediction for the dense model the table was measured on."""
        d = self.dims
        return self.uniform_ms(d["embed"], d["qk"], d["v"], d["hidden"])

    def calibrate(self, measured_ms: float, probe: Optional[tuple[list[int], float]] = None, apply: bool = True) -> None:
        """Record the whole models timed with the units (the dense `anchor`; `probe`: (w, qk, v, hidden) and its
        measured ms) against the units' raw sums, and with `apply` scale the units to the anchor."""
        self.scale = 1.0
        raw = self.dense_ms()
        self.anchor = {"measured_ms": float(measured_ms), "predicted_ms": raw, "error": raw / measured_ms - 1.0}
        self.probe = {}
        if probe is not None:
            shape, ms = probe
            praw = self.uniform_ms(*shape)
            self.probe = {"shape": list(shape), "measured_ms": float(ms), "predicted_ms": praw,
                          "fraction_error": (praw / raw) / (ms / measured_ms) - 1.0}
        if apply and measured_ms > 0 and raw > 0:
            self.scale = float(measured_ms / raw)

    def check_model(self, dims: Dims) -> None:
        """One line when this table was measured for another model shape (or another backend setting)."""
        mine = {k: self.dims.get(k) for k in ("embed", "heads", "qk", "v", "hidden", "depth", "tokens")}
        theirs = {k: getattr(dims, k) for k in mine}
        if mine != theirs:
            diff = next(k for k in mine if mine[k] != theirs[k])
            raise VitDeployError(f"the latency table was measured for another model ({diff} {mine[diff]}, this model "
                                 f"has {theirs[diff]}); measure one with vitdeploy latency-table")

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        atomic_write_json(Path(path), self.to_dict())
        return Path(path)


def load_table(path: str | Path) -> LatencyTable:
    """A latency table JSON (from `vitdeploy latency-table` or the TensorRT device script), checked."""
    p = Path(path)
    if not p.is_file():
        raise VitDeployError(f"latency table {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VitDeployError(f"latency table {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise VitDeployError(f"latency table {p} is not a vitdeploy latency table (format {TABLE_FORMAT})")
    known = set(LatencyTable.__dataclass_fields__)
    try:
        return LatencyTable(**{k: v for k, v in data.items() if k in known})
    except TypeError as e:
        raise VitDeployError(f"latency table {p} is missing fields: {e}") from None


def candidates(total: int, alignment: int, min_keep: float) -> list[int]:
    """Aligned kept counts of a width of `total`, ascending: every multiple of the alignment from the floor (the
    minimum kept fraction rounded up to the alignment) and the full width (the same counts `align_count` can
    give)."""
    if total <= alignment:
        return [total]
    floor = max(alignment, math.ceil(min_keep * total / alignment) * alignment)
    return sorted({k for k in range(floor, total + 1, alignment)} | {total})




# ------------------------------------------------------------------------------------------------ the units
class AttnUnit(nn.Module):
    """One block's attention half as the block runs it: x + ls1(attn(norm1(x)))."""

    def __init__(self, blk: nn.Module) -> None:
        super().__init__()
        self.norm1, self.attn, self.ls1 = blk.norm1, blk.attn, blk.ls1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls1(self.attn(self.norm1(x)))


class MlpUnit(nn.Module):
    """One block's MLP half: x + ls2(mlp(norm2(x)))."""

    def __init__(self, blk: nn.Module) -> None:
        super().__init__()
        self.norm2, self.mlp, self.ls2 = blk.norm2, blk.mlp, blk.ls2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls2(self.mlp(self.norm2(x)))


class Passthrough(nn.Module):
    """The tokens in and out: what a sub-graph call costs with no work in it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def grid_of(cands: list[int], points: int) -> list[int]:
    """`points` of the candidates, evenly spaced by index, both ends included (all of them when fewer)."""
    if len(cands) <= points:
        return list(cands)
    idx = np.unique(np.round(np.linspace(0, len(cands) - 1, points)).astype(int))
    return [cands[i] for i in idx]


def grid_axes(dims: Dims, alignment: int, min_keep: float, grid: Optional[dict] = None) -> dict[str, list[int]]:
    """The widths a table times on each axis: GRID's (or `grid`'s) number of points of the aligned candidates."""
    g = {**GRID, **(grid or {})}
    return {axis: grid_of(candidates(total, alignment, min_keep), g[axis])
            for axis, total in (("widths", dims.embed), ("qk", dims.qk), ("v", dims.v), ("hidden", dims.hidden))}


def _one_block(model: nn.Module) -> nn.Module:
    """A CPU fp32 copy of `model` with its first block only (what every unit is cut from)."""
    blocks = model.blocks
    try:
        model.blocks = nn.Sequential(blocks[0])
        one = copy.deepcopy(model)
    finally:
        model.blocks = blocks
    return one.cpu().float().eval()


def _shaped(one: nn.Module, dims: Dims, w: int, qk: int, v: int, hidden: int) -> nn.Module:
    """A copy of `one` (the one-block copy, or the whole model) with every block sliced to the widths: the first
    dims of each site (timing does not care which), with the same surgery pruning uses."""
    m = copy.deepcopy(one)
    for blk in m.blocks:
        if qk < dims.qk or v < dims.v:
            blk.attn = slice_attention(blk.attn, dims.embed, None, torch.arange(qk).repeat(dims.heads, 1),
                                       torch.arange(v).repeat(dims.heads, 1), None)
        if hidden < dims.hidden:
            blk.mlp = slice_mlp(blk.mlp, dims.embed, list(range(hidden)), None)
    if w < dims.embed:
        slice_embed(m, list(range(w)))
    return m.eval()


def probe_shape(axes: dict[str, list[int]]) -> tuple[int, int, int, int]:
    """The calibration's second whole model: every width at the middle point of its grid axis."""
    return tuple(axes[k][len(axes[k]) // 2] for k in ("widths", "qk", "v", "hidden"))


def unit(one: nn.Module, dims: Dims, kind: str, w: int, qk: int = 0, v: int = 0, hidden: int = 0) -> nn.Module:
    """The module of one unit at the given widths."""
    if kind == "overhead":
        return Passthrough()
    m = _shaped(one, dims, w, qk or dims.qk, v or dims.v, hidden or dims.hidden)
    if kind == "attn":
        return AttnUnit(m.blocks[0])
    if kind == "mlp":
        return MlpUnit(m.blocks[0])
    m.blocks = nn.Sequential()
    return m


# --------------------------------------------------------------------------------------------------- timing
class _Callable:
    """One unit ready to call on one backend: `run()` does one call."""

    def __init__(self, module: nn.Module, x: torch.Tensor, backend: str, threads: int, scratch: Path, name: str):
        self.backend = backend
        if backend == "ort-cpu":
            from vitdeploy.runtime.onnxrt import import_ort, session_options

            path = scratch / f"{name}.onnx"
            inp = "input" if x.dim() == 4 else UNIT_INPUT
            trace_to_onnx(module, x[:2] if len(x) >= 2 else x, path, 17, {inp: {0: "batch"}, UNIT_OUTPUT: {0: "batch"}},
                          [inp], [UNIT_OUTPUT])
            self.session = import_ort().InferenceSession(str(path), sess_options=session_options(threads, spin=False),
                                                         providers=["CPUExecutionProvider"])
            feed = {inp: x.numpy()}
            self.run = lambda: self.session.run(None, feed)
        elif backend == "torch-cpu":
            module = module.eval()
            self.run = lambda: module(x)
        else:  # torch-cuda: fp16 autocast, as the torch-cuda runner serves
            module, xc = module.cuda().eval(), x.cuda()

            def run() -> None:
                with torch.autocast("cuda", dtype=torch.float16):
                    module(xc)
                torch.cuda.synchronize()
            self.run = run


def time_interleaved(calls: list[Callable[[], Any]], rounds: int, block: int, warmup: int,
                     advance: Callable[[int], Any] = lambda n: None) -> list[float]:
    """Median ms per call of each callable, timed in `rounds` rounds of `block` calls each, the order rotating."""
    clock = time.perf_counter
    for c in calls:
        for _ in range(warmup):
            c()
    times: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        for k in range(len(calls)):
            i = (k + r) % len(calls)
            for _ in range(block):
                t0 = clock()
                calls[i]()
                times[i].append((clock() - t0) * 1000.0)
            advance(1)
    return [float(np.median(t)) for t in times]


@contextlib.contextmanager
def _threads(backend: str, threads: int):
    saved = torch.get_num_threads()
    if backend == "torch-cpu":
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(saved)


def build_table(model: nn.Module, backend: str = "ort-cpu", batch: int = 8, threads: Optional[int] = None,
                input_size: tuple[int, int, int] = (3, 224, 224), alignment: int = 8, min_keep: float = 0.1,
                rounds: int = 6, block: int = 3, grid: Optional[dict] = None, name: str = "",
                show_progress: bool = True, calibrate: bool = True) -> LatencyTable:
    """Time every unit of `model` (a dense timm ViT) on `backend` at batch `batch` over the grid, the checks, the
    whole model (the anchor) and a whole model at the grid's middle (the probe), all interleaved in one run; with
    `calibrate`, the units are scaled to the anchor (`LatencyTable.calibrate`)."""
    if backend not in TABLE_BACKENDS:
        raise VitDeployError(f"latency tables are measured on {', '.join(TABLE_BACKENDS)} here; for TensorRT write "
                             "the device kit (vitdeploy latency-table --backend trt)")
    check_backend_available(backend)
    dims = dense_dims(model)
    threads = int(threads or physical_cores())
    axes = grid_axes(dims, alignment, min_keep, grid)
    jobs = []  # (kind, widths, where in the table or None for a check)
    for wi, w in enumerate(axes["widths"]):
        jobs.append(("overhead", (w,), ("overhead", wi)))
        jobs.append(("fixed", (w,), ("fixed", wi)))
        jobs += [("attn", (w, q, v), ("attn", wi, qi, vi)) for qi, q in enumerate(axes["qk"])
                 for vi, v in enumerate(axes["v"])]
        jobs += [("mlp", (w, h), ("mlp", wi, hi)) for hi, h in enumerate(axes["hidden"])]
    checks = _check_points(dims, axes, alignment, min_keep)
    jobs += [(kind, at, None) for kind, at in checks]
    # the calibration: the whole dense model (the anchor) and a whole model at the grid's middle (the probe)
    probe = probe_shape(axes)
    jobs += [("model", (dims.embed,), ("model",)), ("probe", probe, ("probe",))]
    one = _one_block(model)
    whole = copy.deepcopy(model).cpu().float().eval()
    n = dims.tokens
    with tempfile.TemporaryDirectory(prefix="vitdeploy-latency-") as tmp, _threads(backend, threads), \
            make_progress(transient=True) as bar:
        prep = bar.add_task("latency table: preparing units", total=len(jobs), info="", visible=show_progress)
        ready = []
        for j, (kind, at, _) in enumerate(jobs):
            w = at[0]
            x = torch.randn(batch, *input_size) if kind in ("fixed", "model", "probe") else torch.randn(batch, n, w)
            mod = whole if kind == "model" else _shaped(whole, dims, *at) if kind == "probe" else \
                unit(one, dims, kind, w, *([at[1], at[2]] if kind == "attn" else []),
                     **({"hidden": at[1]} if kind == "mlp" else {}))
            ready.append(_Callable(mod, x, backend, threads, Path(tmp), f"u{j}"))
            bar.advance(prep, 1)
        task = bar.add_task(f"latency table: {len(jobs)} units [{backend}] batch {batch}, interleaved",
                            total=rounds * len(jobs), info="", visible=show_progress)
        ms = time_interleaved([r.run for r in ready], rounds, block, warmup=2,
                              advance=lambda k: bar.advance(task, k))
    W, Q, V, Hh = (len(axes[k]) for k in ("widths", "qk", "v", "hidden"))
    overhead, fixed = np.zeros(W), np.zeros(W)
    attn, mlp = np.zeros((W, Q, V)), np.zeros((W, Hh))
    dense_ms, probe_ms = ms[-2], ms[-1]
    for (kind, at, where), t in zip(jobs[:-2], ms[:-2]):
        if where is None:
            continue
        {"overhead": overhead, "fixed": fixed, "attn": attn, "mlp": mlp}[where[0]][where[1:]] = t
    attn = np.maximum(attn - overhead[:, None, None], 0.0)
    mlp = np.maximum(mlp - overhead[:, None], 0.0)
    table = LatencyTable(backend=backend, batch=batch, threads=threads if backend != "torch-cuda" else None,
                         dims=dims.__dict__ | {"input_size": list(input_size)}, widths=axes["widths"], qk=axes["qk"],
                         v=axes["v"], hidden=axes["hidden"], attn_ms=attn.tolist(), mlp_ms=mlp.tolist(),
                         fixed_ms=fixed.tolist(), overhead=overhead.tolist(), host=host_info(threads=threads),
                         model=name, precision="fp16" if backend == "torch-cuda" else "fp32",
                         source=f"measured ({rounds} rounds x {block} calls per unit, interleaved)")
    ov = lambda w: float(np.interp(w, axes["widths"], overhead))  # noqa: E731
    for (kind, at), t in zip(checks, ms[len(ms) - 2 - len(checks):-2]):
        if kind == "attn":
            pred, got = table.attn(*at), t - ov(at[0])
        elif kind == "mlp":
            pred, got = table.mlp(*at), t - ov(at[0])
        else:
            pred, got = table.fixed(at[0]), t
        table.checks.append({"unit": kind, "at": list(at), "measured_ms": got, "interpolated_ms": pred,
                             "error": pred / got - 1.0 if got > 0 else None})
    table.calibrate(dense_ms, (list(probe), probe_ms), apply=calibrate)
    return table


def _check_points(dims: Dims, axes: dict, alignment: int, min_keep: float) -> list[tuple[str, tuple]]:
    """Widths off the grid, in the middle of its widest gaps: one per axis (and the residual width for all three
    units), where the interpolation is checked against a measurement."""
    def middle(axis: str, total: int) -> Optional[int]:
        g, cands = axes[axis], candidates(total, alignment, min_keep)
        gaps = [(b - a, a, b) for a, b in zip(g, g[1:])]
        if not gaps:
            return None
        _, a, b = max(gaps)
        inside = [c for c in cands if a < c < b]
        return inside[len(inside) // 2] if inside else None

    out = []
    w = middle("widths", dims.embed)
    if w is not None:
        out += [("fixed", (w,)), ("attn", (w, dims.qk, dims.v)), ("mlp", (w, dims.hidden))]
    q, v, h = middle("qk", dims.qk), middle("v", dims.v), middle("hidden", dims.hidden)
    if q is not None or v is not None:
        out.append(("attn", (dims.embed, q or dims.qk, v or dims.v)))
    if h is not None:
        out.append(("mlp", (dims.embed, h)))
    return out


def probe_text(probe: Optional[dict]) -> str:
    if not probe:
        return ""
    w, qk, v, h = probe["shape"]
    return (f"; a whole model at widths {w}/{qk}/{v}/{h} timed with them is priced {100 * probe['fraction_error']:+.1f} % "
            f"off its measured fraction of dense")


def describe_budget(b: dict) -> list[str]:
    """compress.json's budget record in a few lines: the budget, predicted vs measured, the side-by-side."""
    kind, value = b["kind"], b["value"]
    if kind in ("macs_ratio", "params_ratio"):
        return [f"budget: {kind} {value:g}: planned at {b['predicted_ratio']:.3f} of the dense {b['cost_model']}, "
                f"{100 * b['retained_importance'] / b['total_importance']:.1f} % of the importance kept "
                f"(optimality gap ≤ {100 * b['gap']:.2f} %)"]
    where = f"{b['backend']} batch {b['batch']}" + (f", {b['threads']} threads" if b.get("threads") else "")
    want = f"{value:g} ms" if kind == "latency_ms" else f"{value:g} × the dense latency"
    lines = [f"budget: {want} on {where}; importance kept {100 * b['retained_importance'] / b['total_importance']:.1f} %"
             f" (optimality gap ≤ {100 * b['gap']:.2f} %)"]
    if b.get("measured_ms") is None:
        return lines + [f"budget: predicted {b['predicted_ms']:.2f} ms from {b['table']['source']} (not measured here)"]
    anchor = b.get("table", {}).get("anchor") or {}
    if anchor:
        lines.append(f"budget: the table's units sum to {anchor['predicted_ms']:.2f} ms for the dense model, timed whole "
                     f"in the same run at {anchor['measured_ms']:.2f} ms ({100 * anchor['error']:+.1f} %; units scaled "
                     f"by {b['table'].get('scale', 1.0):.3f})" + probe_text(b["table"].get("probe")))
    ci = b["rounds"][-1].get("ratio_ci95")
    lines.append(f"budget: predicted {b['predicted_ms']:.2f} ms, measured {b['measured_ms']:.2f} ms against dense "
                 f"{b['dense_measured_ms']:.2f} ms = {b['measured_ratio']:.3f}×"
                 + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                 + f"; {'within' if b['within_tolerance'] else 'outside'} ±{100 * b.get('tolerance', 0.05):.0f} % "
                 f"after {len(b['rounds'])} plan(s)")
    r = b.get("rate_based")
    if r:
        lines.append(f"budget: the rate-based plan at the same predicted latency (rate {r['rate']:.3f}) measured "
                     f"{r['measured_ms']:.2f} ms vs this plan's {r['budget_plan_measured_ms']:.2f} ms and keeps "
                     f"{100 * r['retained_importance'] / b['total_importance']:.1f} % of the importance")
    return lines


# ---------------------------------------------------------------------------------------------- TensorRT
def write_device_kit(model: nn.Module, out: Path, batch: int, input_size: tuple[int, int, int] = (3, 224, 224),
                     alignment: int = 8, min_keep: float = 0.1, grid: Optional[dict] = None, name: str = "") -> Path:
    """A folder to carry to the device: every unit graph (FP16, static batch), units.json, and time_units.sh, which
    times each with trtexec (`--exportTimes`); `vitdeploy latency-table --from-trtexec DIR` then writes the table."""
    dims = dense_dims(model)
    axes = grid_axes(dims, alignment, min_keep, grid)
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    one = _one_block(model)
    units, lines = [], []
    specs = [("model", (dims.embed,)), ("probe", probe_shape(axes))]  # the calibration's two whole models
    whole = copy.deepcopy(model).cpu().float().eval()
    for w in axes["widths"]:
        specs += [("overhead", (w,)), ("fixed", (w,))] + [("attn", (w, q, v)) for q in axes["qk"] for v in axes["v"]] \
            + [("mlp", (w, h)) for h in axes["hidden"]]
    for kind, at in specs:
        w = at[0]
        fname = f"{kind}_" + "_".join(map(str, at)) + ".onnx"
        mod = copy.deepcopy(whole) if kind == "model" else _shaped(whole, dims, *at) if kind == "probe" else \
            unit(one, dims, kind, w, *([at[1], at[2]] if kind == "attn" else []),
                 **({"hidden": at[1]} if kind == "mlp" else {}))
        mod = mod.half()
        image = kind in ("fixed", "model", "probe")
        x = (torch.randn(batch, *input_size) if image else torch.randn(batch, dims.tokens, w)).half()
        inp = "input" if image else UNIT_INPUT
        trace_to_onnx(mod, x, out / "units" / fname, 17, None, [inp], [UNIT_OUTPUT])
        units.append({"file": fname, "unit": kind, "at": list(at)})
        shape = "x".join(map(str, x.shape))
        lines.append(f"time_unit {shlex.quote(fname)} {inp}:{shape}")
    atomic_write_json(out / "units.json", {"format": 1, "batch": batch, "dims": dims.__dict__ | {
        "input_size": list(input_size)}, "axes": axes, "units": units, "model": name})
    script = _DEVICE_SCRIPT.replace("@UNITS@", "\n".join(lines))
    atomic_write_text(out / "time_units.sh", script)
    (out / "time_units.sh").chmod(0o755)
    return out


_DEVICE_SCRIPT = r'''#!/usr/bin/env bash
# Times every unit graph in units/ with trtexec on this device (FP16 graphs, strongly typed, no host<->device
# copies) and writes times/<unit>.json. Then, on any machine with vitdeploy:
#   vitdeploy latency-table --from-trtexec . --out table.json
# and plan with it: vitdeploy compress ... --recipe latency-50 --set prune.budget.backend=trt --latency-table table.json
# Environment: TRTEXEC=/path/to/trtexec, TRT_MAJOR=10|11 (skips version detection).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
die() { echo "error: $*" >&2; exit 2; }
TRTEXEC="${TRTEXEC:-trtexec}"
for candidate in /usr/src/tensorrt/bin/trtexec /usr/local/tensorrt/bin/trtexec /opt/tensorrt/bin/trtexec; do
  command -v "$TRTEXEC" >/dev/null 2>&1 && break
  [ -x "$candidate" ] && TRTEXEC="$candidate"
done
command -v "$TRTEXEC" >/dev/null 2>&1 || die "trtexec not found; set TRTEXEC=/path/to/trtexec"
if [ -z "${TRT_MAJOR:-}" ]; then
  v=$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n 1 | tr -dc '0-9') || true
  [ -n "$v" ] || die "cannot tell the TensorRT version; set TRT_MAJOR=10 or TRT_MAJOR=11"
  TRT_MAJOR=$((v / 10000))
fi
# TensorRT 10 needs --stronglyTyped to keep the FP16 graph's types; 11 always is.
TYPED=""; [ "$TRT_MAJOR" -lt 11 ] && TYPED="--stronglyTyped"
mkdir -p times
time_unit() {
  echo "timing $1"
  "$TRTEXEC" --onnx="units/$1" --shapes="$2" $TYPED --useSpinWait --noDataTransfers \
    --exportTimes="times/${1%.onnx}.json" >"times/${1%.onnx}.log" 2>&1 || die "trtexec failed on $1 (see times/${1%.onnx}.log)"
}
@UNITS@
echo "done: vitdeploy latency-table --from-trtexec $(pwd) --out table.json"
'''


def table_from_trtexec(kit: Path, host: Optional[dict] = None) -> LatencyTable:
    """The table of a device kit whose time_units.sh has run: each unit's median GPU compute time (`computeMs` of
    trtexec's --exportTimes), the pass-through graph's taken out of the units."""
    kit = Path(kit)
    meta_path = kit / "units.json"
    if not meta_path.is_file():
        raise VitDeployError(f"{kit} is not a latency device kit (no units.json)")
    meta = json.loads(meta_path.read_text())
    axes = meta["axes"]
    W, Q, V, Hh = (len(axes[k]) for k in ("widths", "qk", "v", "hidden"))
    overhead, fixed, attn, mlp = np.zeros(W), np.zeros(W), np.zeros((W, Q, V)), np.zeros((W, Hh))
    whole, probe = None, None
    for u in meta["units"]:
        f = kit / "times" / (u["file"][:-5] + ".json")
        if not f.is_file():
            raise VitDeployError(f"{f} is missing: run {kit / 'time_units.sh'} on the device first")
        try:
            trace = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise VitDeployError(f"{f} is not valid JSON: {e}") from None
        compute = [float(e["computeMs"]) for e in trace if isinstance(e, dict) and "computeMs" in e]
        if not compute:
            raise VitDeployError(f"{f} holds no computeMs entries (is it trtexec --exportTimes output?)")
        t = float(np.median(compute))
        at = u["at"]
        wi = axes["widths"].index(at[0])
        if u["unit"] == "model":
            whole = t
        elif u["unit"] == "probe":
            probe = (at, t)
        elif u["unit"] == "overhead":
            overhead[wi] = t
        elif u["unit"] == "fixed":
            fixed[wi] = t
        elif u["unit"] == "attn":
            attn[wi, axes["qk"].index(at[1]), axes["v"].index(at[2])] = t
        else:
            mlp[wi, axes["hidden"].index(at[1])] = t
    table = LatencyTable(backend="trt", batch=int(meta["batch"]), threads=None, dims=meta["dims"],
                        widths=axes["widths"], qk=axes["qk"], v=axes["v"], hidden=axes["hidden"],
                        attn_ms=np.maximum(attn - overhead[:, None, None], 0).tolist(),
                        mlp_ms=np.maximum(mlp - overhead[:, None], 0).tolist(), fixed_ms=fixed.tolist(),
                        overhead=overhead.tolist(), host=host or {}, model=meta.get("model", ""), precision="fp16",
                        source=f"trtexec --exportTimes in {kit}")
    if whole is not None:  # kits written before the anchor have none
        table.calibrate(whole, probe)
    return table
