"""The TensorRT API surface without TensorRT: every attribute and method vitdeploy (runtime/trt.py, deploy/*) and
profiling/profile_engine.py use on the tensorrt module and its objects, found with `ast`, must exist in each committed
list of a release's Python binding names (tests/data/tensorrt_api_*.txt, made by `tests/tensorrt_api.py
extract-wheel VERSION`, which reads the names off that release's own bindings wheel, or by `extract` from the
pybind11 sources under python/src/ of NVIDIA/TensorRT at a release tag)."""
from pathlib import Path

import pytest

from tensorrt_api import extract, missing, uses

DATA = Path(__file__).resolve().parent / "data"
LISTS = sorted(DATA.glob("tensorrt_api_*.txt"))

# what the code is known to use: if the scanner stops seeing these, it has stopped seeing uses at all
KNOWN_MODULE = {"Runtime", "Logger.ERROR", "TensorIOMode.INPUT", "OnnxParser", "BuilderFlag.GPU_FALLBACK",
                "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "ILogger.Severity.ERROR", "nptype", "__version__"}
KNOWN_MEMBERS = {"deserialize_cuda_engine", "DLA_core", "set_tensor_address", "execute_async_v3", "set_input_shape",
                 "get_tensor_profile_shape", "build_serialized_network", "set_memory_pool_limit", "parse_from_file",
                 "create_engine_inspector", "get_timing_cache"}


def test_the_scanner_finds_the_uses():
    module, members = uses()
    assert KNOWN_MODULE <= module, KNOWN_MODULE - module
    assert KNOWN_MEMBERS <= members, KNOWN_MEMBERS - members
    assert "errors" not in members and "batch_range" not in members  # our own attributes, not TensorRT's


BINDINGS = '''
    py::enum_<TensorIOMode>(m, "TensorIOMode", TensorIOModeDoc::descr, py::module_local())
        .value("NONE", TensorIOMode::kNONE)
        .value("INPUT", TensorIOMode::kINPUT)
        .value("OUTPUT", TensorIOMode::kOUTPUT);

    py::class_<IRuntime>(m, "Runtime", RuntimeDoc::descr, py::module_local())
        .def(py::init(&nvinfer1::createInferRuntime), "logger"_a)
        .def("deserialize_cuda_engine", lambdas::runtime_deserialize_cuda_engine, "serialized_engine"_a)
        .def_property("DLA_core", &IRuntime::getDLACore, &IRuntime::setDLACore);
    m.def("nptype", &utils::nptype, "trt_type"_a);
'''


def test_extract_reads_pybind_definitions():
    names = extract(BINDINGS)
    assert {"TensorIOMode", "TensorIOMode.INPUT", "Runtime", "Runtime.deserialize_cuda_engine", "Runtime.DLA_core",
            "<module>.nptype"} <= names
    assert "Runtime.INPUT" not in names and "TensorIOMode.DLA_core" not in names  # members stay with their class


def test_missing_names_what_a_release_lacks():
    api = extract(BINDINGS)
    assert missing(api, {"Runtime", "TensorIOMode.INPUT", "nptype"}, {"DLA_core"}) == []
    assert missing(api, {"TensorIOMode.BOTH", "Builder"}, {"execute_async_v2"}) == [
        ".execute_async_v2", "trt.Builder", "trt.TensorIOMode.BOTH"]


@pytest.mark.parametrize("api_list", LISTS or [None], ids=[p.stem for p in LISTS] or ["no-list"])
def test_every_use_exists_in_the_release(api_list):
    if api_list is None:
        pytest.skip("no tests/data/tensorrt_api_*.txt committed yet: make one per release with "
                    "`python tests/tensorrt_api.py extract-wheel 10.3.0 > tests/data/tensorrt_api_10.txt`")
    api = {ln.strip() for ln in api_list.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    module, members = uses()
    assert missing(api, module, members) == [], f"{api_list.name} lacks these (renamed or removed?)"


def _release(major: int) -> set[str]:
    path = DATA / f"tensorrt_api_{major}.txt"
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


def test_the_committed_lists_are_the_releases_and_tell_them_apart():
    """Both lists exist and hold what each release is known to have and to lack: TensorRT 11 is strongly typed
    only, so the FP16/INT8 builder flags and the explicit-batch flag are gone; both still have the runtime calls."""
    ten, eleven = _release(10), _release(11)
    for api in (ten, eleven):
        assert {"Runtime.deserialize_cuda_engine", "Runtime.DLA_core", "IExecutionContext.execute_async_v3",
                "TensorIOMode.INPUT", "ILogger.Severity", "Severity.ERROR", "<module>.nptype"} <= api
    assert {"BuilderFlag.FP16", "BuilderFlag.INT8", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"} <= ten
    assert missing(eleven, {"BuilderFlag.FP16", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH"}, set()) == [
        "trt.BuilderFlag.FP16", "trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH"]
    assert missing(ten, set(), {"execute_async_v2"}) == [".execute_async_v2"]  # removed in 10.0
