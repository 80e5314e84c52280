"""NVIDIA ModelOpt's ONNX INT8 PTQ (`modelopt.onnx.quantization.quantize`, calibrated on the CPU) as the reference
the INT8 planner is compared with in bench_int8_fashion.py and bench_int8_deit.py.

ModelOpt brings onnxruntime-gpu and its own torch, so it lives in its own virtualenv, never in vitdeploy's:

    python3 -m venv .venv-modelopt && .venv-modelopt/bin/pip install "nvidia-modelopt[onnx]"

`modelopt_int8` writes the calibration images to a .npy file and runs this file under that virtualenv's python
(`python bench_int8_modelopt.py SRC CALIB.npy OUT HIGH_PRECISION`), so nothing of ModelOpt is imported here. Two
settings are compared: ModelOpt's defaults (everything outside its Q/DQ in FP16, its choice for TensorRT) and FP32
for the rest (the fair setting on ONNX Runtime's CPU backend, which has few FP16 kernels).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = Path(os.environ.get("MODELOPT_PYTHON", ROOT / ".venv-modelopt" / "bin" / "python"))
SETTINGS = {"modelopt_default": "fp16", "modelopt_fp32_rest": "fp32"}


def available() -> str | None:
    """None when ModelOpt can run here, else why not."""
    if not VENV_PYTHON.exists():
        return f"no ModelOpt virtualenv at {VENV_PYTHON.parent.parent} (see this file's docstring)"
    return None


def modelopt_int8(src: Path, calib, out: Path, high_precision: str, timeout: int = 3600) -> dict:
    """Quantize the FP32 graph `src` with ModelOpt's INT8 PTQ on `calib` (NCHW float32 images); returns its
    settings, version and wall time. Raises RuntimeError with ModelOpt's last lines when it fails."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="modelopt.") as d:
        npy = Path(d) / "calib.npy"
        np.save(npy, np.ascontiguousarray(calib, dtype=np.float32))
        t0 = time.perf_counter()
        p = subprocess.run([str(VENV_PYTHON), __file__, str(src), str(npy), str(out), high_precision],
                           capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("ModelOpt failed: " + " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:]))
    info = json.loads(p.stdout.strip().splitlines()[-1])
    return {**info, "high_precision_dtype": high_precision, "calibration_images": int(len(calib)),
            "wall_s": round(time.perf_counter() - t0, 1)}


def quantize_all(src: Path, calib, folder: Path) -> tuple[dict, dict]:
    """Every ModelOpt setting of SETTINGS applied to `src`: ({name: graph path}, the record for a result file, with
    `skipped` saying why nothing ran where ModelOpt is not installed)."""
    record: dict = {"skipped": available()}
    paths = {}
    if record["skipped"] is None:
        for name, high_precision in SETTINGS.items():
            paths[name] = Path(folder) / f"{name}.onnx"
            record[name] = modelopt_int8(src, calib, paths[name], high_precision)
    return paths, record


def _drive(src: str, npy: str, out: str, high_precision: str) -> None:
    """Runs under ModelOpt's virtualenv: quantize and print one JSON line about what ran."""
    import importlib.metadata

    import numpy as np
    import onnx
    from modelopt.onnx.quantization import quantize

    inp = next(i.name for i in onnx.load(src, load_external_data=False).graph.input)
    quantize(src, quantize_mode="int8", calibration_data={inp: np.load(npy)}, calibration_eps=["cpu"],
             high_precision_dtype=high_precision, output_path=out, log_level="ERROR")
    print(json.dumps({"modelopt": importlib.metadata.version("nvidia-modelopt"), "quantize_mode": "int8",
                      "calibration_eps": ["cpu"], "calibration_method": "ModelOpt's default for int8"}))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    _drive(*sys.argv[1:])
