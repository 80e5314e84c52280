"""Deployment targets: the packaged ones load and say what the devices run; the schema refuses, in one line naming the
key, every value that TensorRT or the device would refuse later."""
import dataclasses
import json

import pytest
import yaml

from vitdeploy.deploy.targets import Target, available_targets, load_target, target_from_dict
from vitdeploy.errors import TargetError


@pytest.mark.parametrize("name", available_targets())
def test_packaged_targets_validate(name):
    t = load_target(name)
    assert isinstance(t, Target) and t.name == name and t.description
    assert t.max_batch_size == max(p["max"] for p in t.profiles)
    json.dumps(t.to_dict())  # goes into export.json as is


def test_packaged_targets_match_the_devices():
    assert {"cpu", "jetson-orin-nano", "jetson-agx-orin", "a100", "h100"} <= set(available_targets())
    cpu, nano, agx, a100, h100 = map(load_target, ["cpu", "jetson-orin-nano", "jetson-agx-orin", "a100", "h100"])
    assert cpu.device == "cpu" and cpu.tensorrt == []
    assert nano.tensorrt == agx.tensorrt == ["10"]  # JetPack 6 ships TensorRT 10
    assert a100.tensorrt == h100.tensorrt == ["10", "11"]
    assert (agx.dla_core, agx.gpu_fallback) == (0, True) and nano.dla_core is None
    assert all(p["min"] == p["opt"] == p["max"] for p in agx.profiles)  # the DLA runs static shapes only
    assert all(0 <= t.opt_level <= 5 and t.workspace_mib >= 16 for t in (nano, agx, a100, h100))
    assert h100.serving_profile["max"] == h100.max_batch_size == 128


def test_yaml_file_and_int_versions(tmp_path):
    path = tmp_path / "orin-custom.yaml"
    path.write_text(yaml.safe_dump({"device": "jetson", "tensorrt": [10], "precisions": ["fp16"],
                                    "profiles": [{"name": "b4", "min": 1, "opt": 4, "max": 4}]}))
    t = load_target(str(path))
    assert t.name == "orin-custom" and t.tensorrt == ["10"] and t.max_batch_size == 4


BASE = {"device": "datacenter", "precisions": ["fp16"], "tensorrt": ["10"],
        "profiles": [{"name": "b1", "min": 1, "opt": 1, "max": 1}]}


@pytest.mark.parametrize("change,match", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"max_batch_size": 8}, "unknown key 'max_batch_size'"),  # derived from the profiles, not set
    ({"precisions": ["fp8"]}, "'precisions' must be one of fp32, fp16, int8; got 'fp8'"),
    ({"precisions": []}, "'precisions' must list at least one"),
    ({"precisions": ["fp16", "fp16"]}, "'precisions' lists a value twice"),
    ({"opt_level": 6}, "'opt_level' must be <= 5"),
    ({"opt_level": True}, "'opt_level' must be an integer"),
    ({"workspace_mib": 0}, "'workspace_mib' must be >= 16"),
    ({"device": "tpu"}, "'device' must be one of cpu, jetson, datacenter"),
    ({"tensorrt": ["9"]}, "'tensorrt' must be one of 10, 11; got '9'"),
    ({"tensorrt": []}, "'tensorrt' must list the TensorRT versions"),
    ({"device": "cpu"}, "'tensorrt' must be empty for a cpu target"),
    ({"profiles": []}, "'profiles' must list at least one"),
    ({"profiles": [{"name": "b8", "min": 4, "opt": 8, "max": 2}]}, r"'profiles\[0\]' must have min <= opt <= max"),
    ({"profiles": [{"name": "b8", "min": 1, "opt": 8}]}, r"'profiles\[0\]' is missing 'max'"),
    ({"profiles": [{"name": "b8", "min": 1, "opt": 8, "max": 8, "maxx": 9}]}, r"'profiles\[0\]' has unknown key 'maxx'"),
    ({"profiles": [{"name": "b/8", "min": 1, "opt": 8, "max": 8}]}, r"'profiles\[0\].name' must be letters"),
    ({"profiles": [{"name": "b8", "min": 0, "opt": 8, "max": 8}]}, r"'profiles\[0\].min' must be an integer >= 1"),
    ({"profiles": [{"name": "b", "min": 1, "opt": 1, "max": 1}] * 2}, "names must be unique; 'b' appears twice"),
    ({"profiles": "b8"}, "'profiles' must be a list"),
    ({"dla_core": 0}, "'dla_core' needs device 'jetson'"),
    ({"dla_core": -1}, "'dla_core' must be >= 0"),
    ({"device": "jetson", "dla_core": 0, "profiles": [{"name": "b8", "min": 1, "opt": 8, "max": 8}]},
     "must be static on the DLA"),
    ({"gpu_fallback": True}, "'gpu_fallback' only applies with a dla_core"),
    ({"gpu_names": [""]}, "'gpu_names' must be non-empty strings"),
])
def test_bad_targets_name_the_key(change, match):
    with pytest.raises(TargetError, match=match) as e:
        target_from_dict({**BASE, **change}, "'mine'")
    assert str(e.value).startswith("target 'mine'") and "\n" not in str(e.value)


def test_good_dla_target():
    t = target_from_dict({**BASE, "device": "jetson", "dla_core": 1, "gpu_fallback": True}, "'x'")
    assert (t.dla_core, t.gpu_fallback) == (1, True)
    assert dataclasses.asdict(t)["max_batch_size"] == 1


def test_load_errors(tmp_path):
    with pytest.raises(TargetError, match="unknown target 'nope' .*packaged: .*jetson-orin-nano"):
        load_target("nope")
    with pytest.raises(TargetError, match="does not exist"):
        load_target(str(tmp_path / "absent.yaml"))
    (tmp_path / "broken.yaml").write_text("profiles: [unclosed\n")
    with pytest.raises(TargetError, match="not valid YAML at line"):
        load_target(str(tmp_path / "broken.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(TargetError, match="must be a YAML mapping"):
        load_target(str(tmp_path / "list.yaml"))
