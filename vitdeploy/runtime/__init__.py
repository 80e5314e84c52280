"""The runtime: what every stage uses to *run* a model. One module per backend (`torch`, `onnxrt`, `trt`) behind
one Runner interface (`base`), the backend registry, host info and logit comparison.

Names are imported lazily: `import vitdeploy.runtime` loads neither onnxruntime nor TensorRT probing."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Runner": "base",
    "BACKENDS": "registry", "parse_backends": "registry", "check_backend_available": "registry",
    "create_runner": "registry", "gemm_peak": "registry",
    "TorchRunner": "torch",
    "OrtRunner": "onnxrt", "session_options": "onnxrt", "ort_op_profile": "onnxrt", "summarize_ort_profile": "onnxrt",
    "TrtRunner": "trt", "import_tensorrt": "trt", "ENGINE_SUFFIXES": "trt",
    "host_info": "host", "physical_cores": "host", "gpu_clocks": "host",
    "compare_logits": "compare", "cosine_per_sample": "compare", "infer_in_range": "compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitdeploy.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vitdeploy.runtime.{_EXPORTS[name]}"), name)
