"""Artifacts are never half-written and never trusted blindly.

- Every file of a model dir and of a deploy dir (graphs, external data, build script, Triton repository) is checked
  against its sha256 manifest on load: a truncated or changed file fails with one line naming it.
- `kill -9` during `compress` and `export`, at several moments, leaves the final path absent or whole and valid;
  what the killed run left beside it is cleared by the next write to the same output.
- Loading never runs code: a pickle that would run a command is refused, YAML python tags are parse errors.
- Names that reach the file system (Triton model names, manifest entries, precisions in output names) cannot escape.
"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vitdeploy.bench.artifacts import resolve_artifacts
from vitdeploy.errors import CheckpointError, IntegrityError, VitDeployError
from vitdeploy.io import clear_stale, seal, sha256_file, staged_dir
from vitdeploy.models import load_model

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def external_deploy(tmp_path_factory):
    """fp32 + fp16 deploy dir of a fresh vit_digits whose graphs are written with external data, as a model over
    protobuf's 2 GiB limit is (the size threshold is lowered; everything else is the real pipeline)."""
    from vitdeploy.deploy import onnx_export
    from vitdeploy.deploy.pipeline import ExportConfig, run_export

    out = tmp_path_factory.mktemp("integrity") / "deploy"
    mp = pytest.MonkeyPatch()
    mp.setattr(onnx_export, "needs_external_data", lambda m, threshold=0: onnx_export.tensor_bytes(m) > 4096)
    try:
        torch.manual_seed(0)
        rec = run_export(load_model("vit_digits"), out, ExportConfig(precisions=["fp32", "fp16"]))
    finally:
        mp.undo()
    assert [a["external_data"] for a in rec["artifacts"]] == [["model.fp32.onnx.data"], ["model.fp16.onnx.data"]]
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "deploy"
    shutil.copytree(src, dst)
    return dst


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)])


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


# ------------------------------------------------------------------------------------ deploy manifests
def test_external_data_deploy_dir_loads_and_runs(external_deploy):
    """The graphs (weights in .data files beside them) verify, load and run on ORT with the exported parity."""
    from vitdeploy.runtime.compare import compare_logits

    found = {a.precision: a for a in resolve_artifacts(str(external_deploy))}
    assert set(found) == {"fp32", "fp16"}
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    outs = {}
    for p, a in found.items():
        with a.runner("ort-cpu") as r:
            outs[p] = r.infer(x)
    assert compare_logits(outs["fp16"], outs["fp32"])["cosine"] > 0.99


KINDS = ["model.fp32.onnx", "model.fp32.onnx.data", "model.fp16.onnx", "model.fp16.onnx.data", "build_engines.sh",
         "triton/vit_digits_fp16/config.pbtxt", "triton/vit_digits_fp32/1/model.onnx",
         "triton/vit_digits_fp32/1/model.fp32.onnx.data"]


@pytest.mark.parametrize("how", [_truncate, _flip], ids=["truncated", "tampered"])
@pytest.mark.parametrize("name", KINDS)
def test_every_file_of_a_deploy_dir_is_checked(external_deploy, tmp_path, name, how):
    d = _copy(external_deploy, tmp_path)
    assert (d / name).is_file(), sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    how(d / name)
    with pytest.raises(IntegrityError) as e:
        resolve_artifacts(str(d))
    msg = str(e.value)
    assert name in msg and "\n" not in msg and ("sha256" in msg or "bytes" in msg)


@pytest.mark.parametrize("name", ["model.fp16.onnx", "model.fp16.onnx.data"])
def test_a_single_graph_in_a_deploy_dir_is_checked_too(external_deploy, tmp_path, name):
    d = _copy(external_deploy, tmp_path)
    _flip(d / name)
    with pytest.raises(IntegrityError, match=name.replace(".", r"\.")):
        resolve_artifacts(str(d / "model.fp16.onnx"))


@pytest.mark.parametrize("edit,match", [
    (lambda r: r.pop("files"), "manifest"),
    (lambda r: r.__setitem__("files", [f for f in r["files"] if f["file"] != "model.fp16.onnx.data"]),
     "'model.fp16.onnx.data' under artifacts but its manifest does not"),
    (lambda r: r["artifacts"][0].__setitem__("file", "/etc/hostname"), "not a file inside"),
    (lambda r: r["files"][0].__setitem__("file", "../../x"), "not a file inside"),
    (lambda r: r["artifacts"][1].__setitem__("precision", "../../../tmp/x"), "unknown precision"),
    (lambda r: r["artifacts"][0].__setitem__("external_data", ["../secret.data"]), "not a file inside"),
], ids=["no manifest", "file left out", "absolute graph", "manifest escape", "precision path", "data escape"])
def test_a_tampered_export_json_is_refused(external_deploy, tmp_path, edit, match):
    """Each edit is refused by its seal; re-sealed (by someone who knows the format), by the check behind it."""
    d = _copy(external_deploy, tmp_path)
    rec = json.loads((d / "export.json").read_text())
    edit(rec)
    (d / "export.json").write_text(json.dumps(rec))
    with pytest.raises(IntegrityError, match="export.json was changed after it was written"):
        resolve_artifacts(str(d))
    (d / "export.json").write_text(json.dumps(seal(rec)))
    with pytest.raises(IntegrityError, match=match):
        resolve_artifacts(str(d))


def test_a_truncated_export_json_is_one_line(external_deploy, tmp_path):
    d = _copy(external_deploy, tmp_path)
    _truncate(d / "export.json")
    with pytest.raises(VitDeployError, match="not valid JSON") as e:
        resolve_artifacts(str(d))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------- model dir manifests
@pytest.mark.parametrize("change,match", [
    (lambda d: _truncate(d / "model.safetensors"), "model.safetensors has"),
    (lambda d: _flip(d / "model.safetensors"), "model.safetensors does not match"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda d: _truncate(d / "vitdeploy.json"), "not valid JSON"),
], ids=["truncated weights", "tampered weights", "missing weights", "truncated json"])
def test_model_dir_is_checked(digits_model_dir, tmp_path, change, match):
    d = tmp_path / "run"
    shutil.copytree(digits_model_dir, d)
    change(d)
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(str(d))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["compress.json", "kept_dims.png"])
def test_compress_report_and_plot_are_in_the_manifest(digits_model_dir, tmp_path, name):
    from vitdeploy.compression.pipeline import run_compress
    from vitdeploy.compression.recipe import load_recipe

    d = tmp_path / "pruned"
    run_compress(load_model(str(digits_model_dir)), load_recipe("mlp-magnitude", ["finetune.epochs=0"]), None, d, "test")
    load_model(str(d))
    _flip(d / name)
    with pytest.raises(CheckpointError, match=f"{name} does not match"):
        load_model(str(d))


# ----------------------------------------------------------------------------------------------- kill -9
def _entries(top: Path) -> list[str]:
    """Every path under `top`, relative to it. The command under test renames and removes folders while this walks
    them, so a folder that vanishes mid-walk is skipped (os.walk ignores scandir errors) instead of raising."""
    found = []
    for root, dirs, files in os.walk(top):
        rel = os.path.relpath(root, top)
        found += [n if rel == "." else f"{rel}/{n}" for n in dirs + files]
    return found


def _kill_when(cmd: list[str], out: Path, ready, timeout: float = 300) -> str:
    """Start `cmd`, poll the output's folder every millisecond, SIGKILL the process as soon as `ready(entries)` holds
    (entries: every path under the output's parent). Returns 'killed' or 'finished' (when it ended first)."""
    p = subprocess.Popen([sys.executable, "-m", "vitdeploy", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=ROOT)
    start = time.monotonic()
    try:
        while p.poll() is None:
            entries = _entries(out.parent)
            if ready(entries):
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                return "killed"
            if time.monotonic() - start > timeout:
                raise TimeoutError(cmd)
            time.sleep(0.001)
        return "finished"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _staging(entries, *inner):
    """True when a staging folder exists and holds a path whose name contains every string in `inner`."""
    return any(".partial" in e.split("/")[0] and all(s in e.split("/", 1)[-1] for s in inner) and "/" in e
               for e in entries) if inner else any(e.endswith(".partial") for e in entries)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


EXPORT_MOMENTS = {
    "staging created": lambda e: _staging(e),
    "raw graph traced": lambda e: _staging(e, "raw.onnx"),
    "fp32 graph written": lambda e: _staging(e, "model.fp32.onnx") and not _staging(e, "model.fp16"),
    "fp16 being written": lambda e: _staging(e, "model.fp16.onnx"),
    "export.json being written": lambda e: _staging(e, "export.json"),
}


@pytest.mark.parametrize("moment", list(EXPORT_MOMENTS))
def test_kill_during_export_leaves_nothing_that_loads(tmp_path, moment):
    out = tmp_path / "deploy"
    how = _kill_when(["export", "vit_digits", "--precision", "fp32,fp16", "--out", str(out)], out,
                     EXPORT_MOMENTS[moment])
    if out.exists():  # it finished (or was killed after the rename): then it must be whole
        assert {a.precision for a in resolve_artifacts(str(out))} == {"fp32", "fp16"}
    else:
        assert how == "killed"
        with pytest.raises(VitDeployError):
            resolve_artifacts(str(out))
    for stale in out.parent.glob(f".{out.name}.*.partial"):  # the staging folder is never mistaken for a deploy dir
        with pytest.raises(VitDeployError):
            resolve_artifacts(str(stale))
    clear_stale(out)  # what the next export to the same path does first
    assert _leftovers(out) == []


COMPRESS_MOMENTS = {
    "staging created": lambda e: _staging(e),
    "weights being written": lambda e: _staging(e, "model.safetensors"),
    "compress.json being written": lambda e: _staging(e, "compress.json"),
}


@pytest.mark.parametrize("moment", list(COMPRESS_MOMENTS))
def test_kill_during_compress_leaves_nothing_that_loads(tmp_path, digits_model_dir, moment):
    out = tmp_path / "pruned"
    previous = tmp_path / "previous"
    cmd = ["compress", str(digits_model_dir), "--recipe", "mlp-magnitude", "--set", "finetune.epochs=0", "--out", str(out)]
    how = _kill_when(cmd, out, COMPRESS_MOMENTS[moment])
    if out.exists():
        assert load_model(str(out)).arch.blocks[0].mlp.hidden < load_model(str(digits_model_dir)).arch.blocks[0].mlp.hidden
    else:
        assert how == "killed"
        with pytest.raises(VitDeployError):
            load_model(str(out))
    clear_stale(out)
    assert _leftovers(out) == [] and not previous.exists()


def test_kill_while_replacing_an_output_keeps_the_old_or_the_new(tmp_path, digits_model_dir):
    """A second compress to the same path, killed late: the path holds a whole model dir, old or new."""
    out = tmp_path / "pruned"
    shutil.copytree(digits_model_dir, out)
    old = sha256_file(out / "model.safetensors")
    cmd = ["compress", str(digits_model_dir), "--recipe", "mlp-magnitude", "--set", "finetune.epochs=0", "--out", str(out)]
    _kill_when(cmd, out, lambda e: _staging(e, "compress.json") or any(x.endswith(".old") for x in e))
    clear_stale(out)  # puts the old output back if the kill fell between the two renames
    assert _leftovers(out) == []
    loaded = load_model(str(out))
    assert loaded.source["sha256"] == old or "compress" in loaded.meta


def test_stale_partial_of_a_dead_run_is_cleared_but_a_live_one_is_not(tmp_path):
    out = tmp_path / "deploy"
    dead = tmp_path / ".deploy.abcd_123.partial"
    dead.mkdir()
    (dead / "model.fp32.onnx").write_bytes(b"half")
    (tmp_path / ".deploy.zzzz9999.tmp").write_bytes(b"half")
    (tmp_path / ".deployment.abcd1234.partial").mkdir()  # another output's: not ours to touch
    with staged_dir(out) as stage:
        assert not dead.exists() and stage.exists()
        assert clear_stale(out) == []  # the live stage is locked by this process: left alone
        assert stage.exists()
        (stage / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".deployment.abcd1234.partial", "deploy"]


def test_previous_output_is_restored_after_a_kill_between_the_renames(tmp_path):
    """The state a kill between `final -> .old/old` and `stage -> final` leaves: the old output comes back."""
    out = tmp_path / "run"
    trash = tmp_path / ".run.abcdefgh.old"
    (trash / "old").mkdir(parents=True)
    (trash / "old" / "vitdeploy.json").write_text("{}")
    clear_stale(out)
    assert (out / "vitdeploy.json").read_text() == "{}" and not trash.exists()


# ------------------------------------------------------------------------------------------ safe loading
class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    for name, payload in (("evil.pth", {"state_dict": {"w": Evil(marker)}}), ("evil.bin", Evil(marker))):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(payload, f)
        with pytest.raises(CheckpointError, match="weights_only"):
            load_model(str(tmp_path / name), arch="vit_digits")
        with pytest.raises(CheckpointError, match="weights_only"):
            load_model("vit_digits", checkpoint=str(tmp_path / name))
    # a torch zip checkpoint made with torch.save holding the same object
    torch.save({"state_dict": Evil(marker)}, tmp_path / "evil_zip.pt")
    with pytest.raises(CheckpointError):
        load_model(str(tmp_path / "evil_zip.pt"), arch="vit_digits")
    assert not marker.exists()


def test_a_model_dir_whose_weights_are_a_pickle_is_refused(digits_model_dir, tmp_path):
    """Even with the manifest rewritten to match, model.safetensors is only ever read as safetensors."""
    marker = tmp_path / "pwned"
    d = tmp_path / "run"
    shutil.copytree(digits_model_dir, d)
    with open(d / "model.safetensors", "wb") as f:
        pickle.dump(Evil(marker), f)
    cfg = json.loads((d / "vitdeploy.json").read_text())
    cfg["files"]["model.safetensors"] = {"sha256": sha256_file(d / "model.safetensors"),
                                         "bytes": (d / "model.safetensors").stat().st_size}
    (d / "vitdeploy.json").write_text(json.dumps(seal(cfg)))  # the seal rewritten too
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(str(d))
    assert not marker.exists()


def test_safetensors_checkpoints_still_load(tmp_path):
    model = load_model("vit_digits").model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = load_model(str(tmp_path / "w.safetensors"), arch="vit_digits")
    assert torch.equal(loaded.model.head.weight, model.head.weight)


def test_target_yaml_tags_never_run_code(tmp_path):
    from vitdeploy.deploy.targets import load_target

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(VitDeployError):
        load_target(str(evil))
    assert not marker.exists()


# -------------------------------------------------------------------------------------- names on disk
HOSTILE = ["../../evil", "/etc/evil", "a/../../b", "..", ".hidden", "x\\..\\..\\y", "name with spaces; rm -rf ~",
           "C:evil", "ok/../../../../tmp/x", "\x00nul"]


@pytest.mark.parametrize("name", HOSTILE)
def test_triton_model_names_cannot_escape_the_repository(tmp_path, external_deploy, name):
    from vitdeploy.deploy.triton import TritonModel, write_model

    repo = tmp_path / "sandbox" / "triton"
    repo.mkdir(parents=True)
    m = TritonModel(name=name, platform="onnxruntime_onnx", max_batch_size=8, input_name="input", input_dtype="fp32",
                    input_dims=[3, 32, 32], output_name="logits", output_dtype="fp32", output_dims=[10],
                    preferred_batch_sizes=[], dla_core=None, instance_kind="KIND_CPU")
    try:
        folder = write_model(repo, m, external_deploy / "model.fp32.onnx")
    except VitDeployError as e:
        assert "\n" not in str(e)
    else:
        assert folder.resolve().parent == repo.resolve()
    outside = [p for p in (tmp_path / "sandbox").rglob("*") if not p.resolve().is_relative_to(repo.resolve())]
    assert outside == [] and sorted(p.name for p in tmp_path.iterdir()) == ["sandbox"]


def test_deploy_extras_sanitise_the_model_name(tmp_path, external_deploy):
    """The model name comes from a user's file name; the Triton folders stay inside triton/ whatever it is."""
    from vitdeploy.deploy.pipeline import resolve_target
    from vitdeploy.deploy.serving import write_deploy_extras

    stage = tmp_path / "stage"
    stage.mkdir()
    shutil.copy(external_deploy / "model.fp32.onnx", stage)
    shutil.copy(external_deploy / "model.fp32.onnx.data", stage)
    rec = write_deploy_extras(stage, [{"file": "model.fp32.onnx", "precision": "fp32"}], resolve_target("cpu"),
                              (3, 32, 32), 10, "my model (v2); rm -rf ~")
    for m in rec["triton"]["models"]:
        assert (stage / m["config"]).resolve().is_relative_to((stage / "triton").resolve())
        assert all(c.isalnum() or c in "_.-" for c in m["name"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
