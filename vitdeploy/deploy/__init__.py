"""Deployment: ONNX export, summary and parity checks (TensorRT and friends build on the exported file)."""
from vitdeploy.deploy.onnx_export import export_onnx, onnx_summary, parity, write_onnx

__all__ = ["export_onnx", "onnx_summary", "parity", "write_onnx"]
