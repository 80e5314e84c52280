"""TensorRT engines from the exported ONNX graphs, through the Python API, where `tensorrt` imports.

TensorRT 10 and 11 differ in how precision is chosen (NVIDIA, "Migrating from TensorRT 10.x to 11.x"):
- 10.x builds weakly typed networks by default, where BuilderFlag.FP16/INT8 let the builder pick lower-precision
  kernels, and it can also build strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED), where every
  tensor keeps the type the graph gives it. EXPLICIT_BATCH is deprecated and ignored in 10.0 (always explicit).
- 11.x removed "all precision-enabling builder flags such as BuilderFlag.FP16 and BuilderFlag.INT8" and the INT8
  calibrators ("IBuilderConfig.int8_calibrator -> explicit quantization with Q/DQ nodes"); every network is strongly
  typed and the STRONGLY_TYPED flag is "retained for API compatibility but is ignored".
So precision lives in the graph: FP16 casts and Q/DQ nodes written by the export, read by both versions.

The decisions (which flags, strongly typed or not, DLA or not) are pure functions, tested without TensorRT;
only `build_engine` touches the library, imported when called, never at module import.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from vitdeploy.deploy.targets import Target
from vitdeploy.errors import BackendError
from vitdeploy.io import atomic_write_bytes, atomic_write_json, sha256_file
from vitdeploy.precision import PRECISIONS
from vitdeploy.runtime import trt as runtime_trt

MISSING_HINT = "build_engines.sh has the trtexec commands to build on the device"
# Layer and tactic names TensorRT gives a fused multi-head attention kernel: `_gemm_mha_v2_myl0_17` with tactic
# `_gemm_mha_v2_0x...` (Myelin, TRT 10), `fmha`/`fused_mha`/`mha_v2` kernels, and flash-attention tactics.
_FUSED_ATTENTION = re.compile(r"(_gemm_mha|fused_?mha|fmha|mha_v2|flash_?attn|flash_?attention)", re.IGNORECASE)


# ------------------------------------------------------------------------------------- pure decisions
def trt_major(version: str) -> int:
    """10 from "10.3.0.30"; the major version decides which build path applies."""
    m = re.match(r"^\s*(\d+)\.", str(version))
    if not m:
        raise BackendError(f"cannot read a TensorRT version from {version!r} (expected e.g. '10.3.0')")
    return int(m.group(1))


def dla_core_for(precision: str, target: Target) -> Optional[int]:
    """The DLA core a graph of this precision runs on: the target's, unless fp32 (the DLA runs FP16 and INT8 only)."""
    return target.dla_core if precision != "fp32" else None


def build_settings(major: int, precision: str, target: Target) -> dict[str, Any]:
    """How to build one graph: builder flags, strong typing, DLA; and one line saying why.

    - TensorRT 11: strongly typed always, no precision flags (they were removed); DLA where the target has one.
    - TensorRT 10, GPU: fp32 builds weakly typed without flags (TF32 stays on); fp16 builds strongly typed, so the
      LayerNorm, Softmax and residual adds the FP16 graph keeps in FP32 stay FP32 (a weakly typed FP16 build may
      run them in FP16, the overflow the graph avoids); int8 (explicit Q/DQ) sets INT8 plus FP16, so the layers
      outside the Q/DQ pairs may run in FP16 instead of FP32.
    - TensorRT 10, DLA: the DLA runs FP16 and INT8 only, chosen by the precision flags on this version; an fp32 graph
      is built for the GPU.
    """
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r} for a TensorRT build ({', '.join(PRECISIONS)})")
    if major < 10:
        raise BackendError(f"TensorRT {major} is too old: vitdeploy builds engines with TensorRT 10 or 11")
    dla = dla_core_for(precision, target)
    out: dict[str, Any] = {"strongly_typed": True, "flags": [], "dla_core": dla,
                           "gpu_fallback": bool(dla is not None and target.gpu_fallback)}
    if major >= 11:
        out["why"] = "TensorRT 11: strongly typed, precision from the graph"
    elif dla is not None:
        out.update(strongly_typed=False, flags=["FP16"] if precision == "fp16" else ["INT8", "FP16"])
        out["why"] = f"TensorRT 10 on DLA core {dla}: {precision} via builder flags"
    elif precision == "fp16":
        out["why"] = "TensorRT 10: strongly typed, so the FP32 islands of the FP16 graph stay FP32"
    elif precision == "int8":
        out.update(strongly_typed=False, flags=["INT8", "FP16"])
        out["why"] = "TensorRT 10: explicit Q/DQ with INT8, FP16 for the layers outside the Q/DQ pairs"
    else:
        out.update(strongly_typed=False)
        out["why"] = "TensorRT 10: fp32 (TF32 allowed)"
    if target.dla_core is not None and dla is None:
        out["why"] += "; on the GPU because the DLA runs FP16 and INT8 only"
    return out


def slug(text: str) -> str:
    """Lower-case letters, digits, dots and dashes: safe in a file name on any system."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"


def timing_cache_name(gpu_name: Optional[str], capability: Optional[tuple[int, int]], trt_version: str) -> str:
    """`nvidia-h100-80gb-hbm3-sm90-trt10.3.0.cache`: a timing cache only holds for one GPU model and TensorRT build
    (TensorRT skips a cache "generated by a TensorRT build of" another version), so the name carries both."""
    sm = f"-sm{capability[0]}{capability[1]}" if capability else ""
    return f"{slug(gpu_name or 'gpu')}{sm}-trt{slug(trt_version)}.cache"


def gpu_matches(target: Target, gpu_name: Optional[str]) -> bool:
    """Whether engines built on this GPU suit the target (always, when the target names no GPU or we cannot tell)."""
    if not target.gpu_names or not gpu_name:
        return True
    return any(g.lower() in gpu_name.lower() for g in target.gpu_names)


def summarize_layers(info: dict) -> dict[str, Any]:
    """Layer count and whether attention was fused, from the engine inspector's JSON (TensorRT 10 or 11 layout).

    With ProfilingVerbosity.DETAILED each layer is a mapping with Name, LayerType and TacticName; with less, a bare
    name. TensorRT 11 replaced the top-level "Bindings" list by "I/O Tensors" objects; both are read.
    """
    layers = info.get("Layers", [])
    names = [(layer.get("Name", ""), layer.get("TacticName", ""), layer.get("LayerType", ""))
             if isinstance(layer, dict) else (str(layer), "", "") for layer in layers]
    fused = [n for n, tactic, _ in names if _FUSED_ATTENTION.search(n) or _FUSED_ATTENTION.search(tactic)]
    io = info.get("I/O Tensors")
    io_names = [t.get("Name") for t in io] if isinstance(io, list) else list(info.get("Bindings", []))
    return {
        "layers": len(layers),
        "attention_fused": bool(fused),
        "fused_attention_layers": fused,
        "myelin_layers": sum(1 for n, _, kind in names
                             if "myelin" in kind.lower() or "_myl" in n or "ForeignNode" in n),
        "io_tensors": io_names,
    }


# ------------------------------------------------------------------------------------------ TensorRT
def import_tensorrt() -> Any:
    """The tensorrt module (through the runtime's one import), or a one-line BackendError saying it is missing and
    where the build commands are."""
    return runtime_trt.import_tensorrt(hint=MISSING_HINT)


def local_gpu() -> tuple[Optional[str], Optional[tuple[int, int]]]:
    """Name and compute capability of CUDA device 0, as far as torch can tell (None, None otherwise)."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]


def _logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors, so a failed build can say why in one line."""

    class Collecting(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings = 0

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg).strip())
            elif int(severity) == int(trt.ILogger.Severity.WARNING):
                self.warnings += 1

    return Collecting()


def _first_line(messages: list[str], fallback: str) -> str:
    text = next((m for m in messages if m), fallback)
    more = f" (+{len(messages) - 1} more)" if len(messages) > 1 else ""
    return text.splitlines()[0] + more


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool, major: int) -> tuple[Any, Any]:
    """The network parsed from the ONNX file (from the file, so external weights beside it are found), and the
    parser, which must outlive the build: it owns the weights the network points at."""
    flags = 0
    if strongly_typed and major == 10:  # always on (and the flag ignored) from 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise BackendError(f"TensorRT could not parse {onnx_path.name}: {_first_line(errors, 'unknown parser error')}")
    return network, parser


def _builder_config(trt: Any, builder: Any, settings: dict, target: Target, profile: dict, chw: tuple[int, int, int],
                    input_name: str, static_batch: Optional[int], timing_cache: Optional[Path]) -> Any:
    """Workspace, optimisation level, precision flags, DLA core, the batch profile and the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(target.workspace_mib) << 20)
    config.builder_optimization_level = int(target.opt_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector needs it to name kernels
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings["dla_core"] is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings["dla_core"])
        if settings["gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if static_batch is None:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(input_name, (profile["min"], *chw), (profile["opt"], *chw), (profile["max"], *chw))
        config.add_optimization_profile(opt_profile)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, False)
    return config


def build_engine(onnx_path: Path, engine_path: Path, precision: str, profile: dict, target: Target,
                 chw: tuple[int, int, int], input_name: str = "input", static_batch: Optional[int] = None,
                 timing_cache: Optional[Path] = None, layer_info_path: Optional[Path] = None) -> dict[str, Any]:
    """Build and write one engine for `profile` ({name, min, opt, max} batch sizes) and inspect it.

    The timing cache at `timing_cache` is read when present and written back with this build's timings. Returns
    the engine's record for export.json (file, size, settings, layer summary). Parser and build failures raise a
    one-line BackendError.
    """
    trt = import_tensorrt()
    major = trt_major(trt.__version__)
    settings = build_settings(major, precision, target)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, settings["strongly_typed"], major)  # parser owns the weights
    config = _builder_config(trt, builder, settings, target, profile, chw, input_name, static_batch, timing_cache)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT failed to build {engine_path.name} ({precision}, profile {profile['name']}): "
                           f"{_first_line(logger.errors, 'no error message from the builder')}")
    data = bytes(memoryview(plan))
    atomic_write_bytes(engine_path, data)
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))

    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise BackendError(f"TensorRT built {engine_path.name} but cannot load it: "
                           f"{_first_line(logger.errors, 'no error message from the runtime')}")
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    if layer_info_path is not None:
        atomic_write_json(layer_info_path, info)
    return {
        "file": engine_path.name, "precision": precision, "profile": dict(profile),
        "bytes": engine_path.stat().st_size, "sha256": sha256_file(engine_path),
        "tensorrt_version": str(trt.__version__), **{k: settings[k] for k in ("strongly_typed", "flags", "dla_core")},
        "settings": settings["why"], "layer_info": layer_info_path.name if layer_info_path else None,
        "timing_cache": str(timing_cache) if timing_cache else None, "builder_warnings": logger.warnings,
        **summarize_layers(info),
    }
