"""Measurement: backend runners, latency/throughput profiling, op-level profiles, accuracy, reports and plots."""
from vitdeploy.bench.accuracy import compare_logits, evaluate, evaluate_artifacts
from vitdeploy.bench.host import host_info
from vitdeploy.bench.latency import Extras, ProfileItem, measure_latency, profile_artifacts, results_table
from vitdeploy.bench.memory import rss_growth
from vitdeploy.bench.op_profile import summarize_ort_profile
from vitdeploy.bench.pareto import best_within, budget_bands, pareto_front
from vitdeploy.bench.runners import (
    BACKENDS,
    OrtRunner,
    Runner,
    TorchRunner,
    check_backend_available,
    create_runner,
    parse_backends,
)
from vitdeploy.bench.trt import TrtRunner

__all__ = [
    "BACKENDS", "Extras", "OrtRunner", "ProfileItem", "Runner", "TorchRunner", "TrtRunner", "best_within",
    "budget_bands", "check_backend_available", "compare_logits", "create_runner", "evaluate", "evaluate_artifacts",
    "host_info", "measure_latency", "pareto_front", "parse_backends", "profile_artifacts", "results_table",
    "rss_growth", "summarize_ort_profile",
]
