"""Measurement: backend runners, latency/throughput profiling, accuracy, and a description of the host."""
from vitdeploy.bench.accuracy import compare_logits, evaluate
from vitdeploy.bench.host import host_info
from vitdeploy.bench.latency import measure_latency, profile_artifacts, results_table
from vitdeploy.bench.runners import (
    BACKENDS,
    OrtRunner,
    Runner,
    TorchRunner,
    check_backend_available,
    create_runner,
    parse_backends,
)

__all__ = [
    "BACKENDS", "OrtRunner", "Runner", "TorchRunner", "check_backend_available", "compare_logits", "create_runner",
    "evaluate", "host_info", "measure_latency", "parse_backends", "profile_artifacts", "results_table",
]
