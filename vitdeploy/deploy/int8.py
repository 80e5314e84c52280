"""The INT8 graph: explicit Q/DQ (QDQ format) on the inputs of the Linear layers, calibrated on real images.

TensorRT 11 has no INT8 builder flag or calibrator any more: the scales must be in the graph, symmetric (zero
point 0), with per-output-channel weight scales. Quantizing the residual adds, LayerNorm or Softmax costs
accuracy for no speed, so by default only the MatMul/Gemm inputs of Linear layers get Q/DQ; the attention
matmuls (Q·Kᵀ and P·V) are an option. onnxruntime.quantization does the calibration and the insertion; this
module chooses the nodes and options and checks the placement rules on the result (`qdq_problems`).
With an accuracy budget the placement is planned per layer instead (int8_plan.py, on calibrate.py and qdq.py).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from vitdeploy.deploy.onnx_export import needs_external_data
from vitdeploy.errors import VitDeployError

CALIB_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIB_IMAGES = 256
QUANTIZED_OPS = ("MatMul", "Gemm")
_CALIB_BATCH = 16  # images per calibration step: bounds the memory the histogram calibrators hold at once


@dataclass
class Int8Config:
    """How the INT8 graph is calibrated and where its Q/DQ go: a fixed placement, or a plan under an accuracy
    budget (`max_drop` and/or `min_agreement`; see int8_plan.py)."""

    method: Optional[str] = None  # None: minmax for the fixed placement, "auto" (per tensor) for a plan
    attention: bool = False  # also quantize the attention matmuls (Q·Kᵀ, P·V); a plan always considers them
    exclude: tuple[str, ...] = ()  # layer names ("blocks.0.mlp.fc1", "head", a block "blocks.11") or ONNX node names
    percentile: float = 99.999  # for method="percentile"
    max_drop: Optional[float] = None  # plan: top-1 points the INT8 graph may lose against FP32 (held-out images)
    min_agreement: Optional[float] = None  # plan: least top-1 agreement with FP32 (held-out images)
    plan_images: int = 1000  # plan: held-out images

    @property
    def planned(self) -> bool:
        return self.max_drop is not None or self.min_agreement is not None

    def plan_config(self, batch: int = 8, threads: Optional[int] = None) -> Any:
        from vitdeploy.deploy.int8_plan import PlanConfig

        return PlanConfig(max_drop=self.max_drop, min_agreement=self.min_agreement, images=int(self.plan_images),
                          method=str(self.method), percentile=float(self.percentile), batch=batch, threads=threads)

    def __post_init__(self) -> None:
        if self.method is None:
            self.method = "auto" if self.planned else "minmax"
        if self.method == "auto" and not self.planned:
            raise VitDeployError("--calib-method auto chooses a method per tensor for a plan: add --int8-max-drop "
                                 "or --int8-min-agreement")
        if self.method not in (*CALIB_METHODS, "auto"):
            raise VitDeployError(f"unknown calibration method {self.method!r}; use one of: "
                                 f"{', '.join(CALIB_METHODS)}, auto")
        if self.planned:
            self.plan_config()  # checks the budget
        if not 90.0 <= float(self.percentile) <= 100.0:
            raise VitDeployError(f"calibration percentile must be in [90, 100], got {self.percentile}")
        self.exclude = tuple(e.strip() for e in self.exclude if e.strip())


# ----------------------------------------------------------------------------------------- node choice
def module_name(node_name: str) -> str:
    """The PyTorch module a TorchScript-exported node came from: "/blocks/blocks.0/attn/qkv/MatMul" -> "blocks.0.attn.qkv".

    The exporter writes one scope per module; children of a ModuleList already carry their qualified name
    ("blocks.0"), which replaces the list's own scope.
    """
    parts: list[str] = []
    for comp in [c for c in node_name.split("/") if c][:-1]:
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp
        else:
            parts.append(comp)
    return ".".join(parts)


def _constants(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def linear_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul/Gemm nodes with a constant weight: the Linear layers."""
    consts = _constants(model)
    return [n for n in model.graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in consts]


def attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMuls whose two inputs are both activations: attention's Q·Kᵀ and P·V."""
    consts = _constants(model)
    return [n for n in model.graph.node if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def excluded_nodes(model: onnx.ModelProto, exclude: tuple[str, ...]) -> list[str]:
    """The MatMul/Gemm nodes (Linear and attention) that `exclude` entries name; an entry naming none is an error."""
    return select_nodes(model, Int8Config(attention=True, exclude=exclude))[1] if exclude else []


def select_nodes(model: onnx.ModelProto, cfg: Int8Config) -> tuple[list[str], list[str]]:
    """(nodes to quantize, nodes excluded by `cfg.exclude`); an exclude entry that matches nothing is an error."""
    candidates = linear_nodes(model) + (attention_nodes(model) if cfg.attention else [])
    excluded: list[str] = []
    for entry in cfg.exclude:
        hits = [n.name for n in candidates
                if n.name == entry or module_name(n.name) == entry or module_name(n.name).startswith(entry + ".")]
        if not hits:
            names = sorted({module_name(n.name) for n in candidates})
            raise VitDeployError(f"--exclude '{entry}' matches no quantized layer; layers look like: "
                                 f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
        excluded += hits
    chosen = [n.name for n in candidates if n.name not in set(excluded)]
    if not chosen:
        raise VitDeployError("nothing left to quantize: every MatMul/Gemm is excluded")
    return chosen, list(dict.fromkeys(excluded))


# ----------------------------------------------------------------------------------------- calibration
def _reader_class() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    class ImageBatches(CalibrationDataReader):
        """Calibration images in fixed-size batches; `set_range` lets the calibrator take them a few at a time."""

        def __init__(self, images: np.ndarray, batch: int, input_name: str, dtype: Any) -> None:
            self.batches = [_padded(images[i:i + batch], batch) for i in range(0, len(images), batch)]
            self.input_name, self.dtype = input_name, dtype
            self.set_range(0, len(self.batches))

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(self.batches[start_index:end_index])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            b = next(self._it, None)
            return None if b is None else {self.input_name: b.astype(self.dtype)}

    return ImageBatches


def _padded(x: np.ndarray, batch: int) -> np.ndarray:
    """Exactly `batch` images (repeating the last) for graphs with a fixed batch size."""
    return x if len(x) == batch else np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])


def _graph_input(model: onnx.ModelProto) -> tuple[str, Optional[int]]:
    inits = {t.name for t in model.graph.initializer}
    inp = next(v for v in model.graph.input if v.name not in inits)
    dim = inp.type.tensor_type.shape.dim[0]
    return inp.name, (int(dim.dim_value) if dim.HasField("dim_value") else None)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger and prints calibration progress; keep both
    off the user's terminal (our progress bar says what is happening)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


# ------------------------------------------------------------------------------------------ quantize
def quantize_int8(model: onnx.ModelProto, images: np.ndarray, cfg: Int8Config) -> tuple[onnx.ModelProto, dict]:
    """Explicit-Q/DQ INT8 copy of the clean FP32 `model`, calibrated on `images` (NCHW float32).

    Symmetric int8 activations and per-channel symmetric int8 weights (zero point 0, as TensorRT requires);
    MatMul/Gemm outputs and biases stay float, so Q/DQ sit only on the chosen layers' inputs.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(images) < 1:
        raise VitDeployError("INT8 calibration needs at least one image")
    nodes, excluded = select_nodes(model, cfg)
    input_name, static_batch = _graph_input(model)
    reader = _reader_class()(np.asarray(images, dtype=np.float32), static_batch or _CALIB_BATCH, input_name, np.float32)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[cfg.method]
    extra = {
        "ActivationSymmetric": True, "WeightSymmetric": True, "CalibTensorRangeSymmetric": True,
        "QuantizeBias": False,  # TensorRT wants float biases; they stay in the separate Add after the MatMul
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),  # Q/DQ on inputs only: outputs feed float ops
        "CalibStridedMinMax": 1,  # one batch per calibrator step (any method): bounded memory on large models
        "CalibPercentile": float(cfg.percentile),
    }
    large = needs_external_data(model)
    with tempfile.TemporaryDirectory(prefix="vitdeploy-int8.") as d, _quiet_quantizer():
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        onnx.save_model(model, str(src), save_as_external_data=large)
        try:
            quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=nodes, per_channel=True,
                            reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            use_external_data_format=large, calibrate_method=method, extra_options=extra)
        except (ValueError, RuntimeError) as e:
            raise VitDeployError(f"INT8 quantization failed: {str(e).strip().splitlines()[0]}") from e
        quantized = onnx.load(str(dst))
    problems = qdq_problems(quantized)
    if problems:
        raise VitDeployError(f"INT8 graph breaks the Q/DQ placement rules: {problems[0]}")
    record = {
        **{k: v for k, v in asdict(cfg).items() if k in ("method", "attention")},
        **({"percentile": cfg.percentile} if cfg.method == "percentile" else {}),
        "exclude": list(cfg.exclude), "images": int(len(images)), "activations": "int8 symmetric per-tensor",
        "weights": "int8 symmetric per-channel", "quantized_nodes": len(nodes), "excluded_nodes": excluded,
        "quantized_layers": sorted({module_name(n) for n in nodes}),
    }
    return quantized, record


# ---------------------------------------------------------------------------------- placement rules
@dataclass
class _Index:
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    readers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    inits: dict[str, onnx.TensorProto] = field(default_factory=dict)


def _index(model: onnx.ModelProto) -> _Index:
    ix = _Index(inits={t.name: t for t in model.graph.initializer})
    for n in model.graph.node:
        for o in n.output:
            ix.producers[o] = n
        for i in n.input:
            ix.readers.setdefault(i, []).append(n)
        if n.op_type == "Constant":
            ix.inits[n.output[0]] = n.attribute[0].t
    return ix


def _array(ix: _Index, name: str) -> Optional[np.ndarray]:
    return numpy_helper.to_array(ix.inits[name]) if name in ix.inits else None


def qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Every way `model` breaks the INT8 placement rules TensorRT and our accuracy targets need (empty if none):

    - a QuantizeLinear feeds only DequantizeLinear, and every DequantizeLinear feeds only MatMul/Gemm
      (so nothing quantizes a residual Add, a LayerNormalization or a Softmax input);
    - all Q/DQ are int8 with zero point 0 (symmetric);
    - weights are int8 initializers with one scale per output channel on the right axis.
    """
    ix = _index(model)
    problems: list[str] = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            bad = [r.op_type for r in ix.readers.get(n.output[0], []) if r.op_type != "DequantizeLinear"]
            if bad:
                problems.append(f"QuantizeLinear '{n.name}' feeds {', '.join(sorted(set(bad)))}, not only DequantizeLinear")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems += _zero_point_problems(ix, n)
        if n.op_type == "DequantizeLinear":
            bad = [r.op_type for r in ix.readers.get(n.output[0], []) if r.op_type not in QUANTIZED_OPS]
            if bad:
                problems.append(f"DequantizeLinear '{n.name}' feeds {', '.join(sorted(set(bad)))}, not only MatMul/Gemm")
            if n.input[0] in ix.inits:
                problems += _weight_problems(ix, n)
    return problems


def _zero_point_problems(ix: _Index, n: onnx.NodeProto) -> list[str]:
    zp = _array(ix, n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if zp is None:
        return [f"{n.op_type} '{n.name}' has no constant zero point (int8 needs an explicit int8 zero point of 0)"]
    if zp.dtype != np.int8 or np.any(zp != 0):
        return [f"{n.op_type} '{n.name}' is not symmetric int8 (zero point {zp.dtype} {zp.reshape(-1)[:3].tolist()})"]
    return []


def _weight_problems(ix: _Index, dq: onnx.NodeProto) -> list[str]:
    w, scale = _array(ix, dq.input[0]), _array(ix, dq.input[1])
    if w is None or scale is None or w.dtype != np.int8:
        return [f"weight DequantizeLinear '{dq.name}' does not read an int8 initializer with a constant scale"]
    readers = ix.readers.get(dq.output[0], [])
    axis_attr = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    problems = []
    for r in readers:
        trans_b = next((a.i for a in r.attribute if a.name == "transB"), 0) if r.op_type == "Gemm" else 0
        out_axis = 0 if trans_b else w.ndim - 1
        if scale.size != w.shape[out_axis] or axis_attr % w.ndim != out_axis:
            problems.append(f"weight of '{r.name}' is not quantized per output channel "
                            f"({scale.size} scales on axis {axis_attr} of a {list(w.shape)} weight)")
    return problems
