"""The other side of the bad-input suite: what must keep working. `--out .` and relative outputs, `export .` from inside
a model dir, the documented `export DIR --out DIR/deploy`, sealed descriptions that load, --skip-bad-images and
--new-head, a report that is staged, build_engines.sh --help from anywhere, the DLA core of profile_engine.py, and
--help examples that parse."""
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vitdeploy.cli import cli, main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _images(root, classes, per_class=3, broken=None):
    from PIL import Image

    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.new("RGB", (8, 8), (60 * i, 40 * j, 120)).save(root / name / f"{j}.png")
    if broken:
        (root / classes[-1] / broken).write_bytes(b"not an image at all")
    return root


# --------------------------------------------------------------------------------------------- outputs
@pytest.fixture(scope="module")
def exported_from_inside(tmp_path_factory, digits_model_dir):
    """`cd MODEL_DIR && vitdeploy export . --out deploy`: the relative, documented layout, run as a user runs it."""
    run = tmp_path_factory.mktemp("inside") / "digits-run"
    shutil.copytree(digits_model_dir, run)
    old = os.getcwd()
    os.chdir(run)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["export", ".", "--out", "deploy"])
    finally:
        os.chdir(old)
    assert exc.value.code == 0
    return run


def test_export_dot_from_inside_a_model_dir(exported_from_inside):
    record = json.loads((exported_from_inside / "deploy" / "export.json").read_text())
    assert [m["name"] for m in record["triton"]["models"]] == ["digits-run_fp32"]
    assert sorted(p.name for p in exported_from_inside.parent.iterdir()) == ["digits-run"]  # no staging leftovers
    from vitdeploy.models import load_model

    load_model(str(exported_from_inside))  # the model dir's own manifest still verifies


def test_build_script_help_works_from_any_directory(exported_from_inside, tmp_path):
    script = exported_from_inside / "deploy" / "build_engines.sh"
    p = subprocess.run(["bash", str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "build" in p.stdout and "triton" in p.stdout and not p.stdout.startswith("#!"), p.stdout


def test_compress_to_dot_in_an_empty_folder(capsys, tmp_path, digits_model_dir, monkeypatch):
    work = tmp_path / "vtp"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = _run(capsys, ["compress", digits_model_dir, "--recipe", "mlp-magnitude", "--out", "."])
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    from vitdeploy.models import load_model

    assert load_model(str(work)).meta["format"] == "vitdeploy.model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vtp"]  # no '..*.partial' or '..*.old' beside it


def test_a_failed_report_leaves_no_folder(capsys, tmp_path, digits_model_dir, monkeypatch):
    """report stages its folder: a failure after the plots are drawn leaves neither the folder nor a leftover."""
    import vitdeploy.bench.report as report

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "render_markdown", fail)
    code, _, err = _run(capsys, ["report", digits_model_dir, "--out", tmp_path / "report"])
    assert code == 2 and "cannot write" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- seals
def test_a_description_edited_through_the_library_loads_and_a_hand_edit_does_not(tmp_path, digits_model_dir):
    """The seal is what refuses an edit: the same edit, re-sealed, loads; unsealed, it names the file."""
    from vitdeploy.errors import IntegrityError
    from vitdeploy.io import seal
    from vitdeploy.models import load_model

    d = tmp_path / "m"
    shutil.copytree(digits_model_dir, d)
    cfg = json.loads((d / "vitdeploy.json").read_text())
    cfg["note"] = "mine"
    (d / "vitdeploy.json").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match="vitdeploy.json was changed"):
        load_model(str(d))
    (d / "vitdeploy.json").write_text(json.dumps(seal(cfg)))
    assert load_model(str(d)).meta["note"] == "mine"


# --------------------------------------------------------------------------------------------- data
def test_skip_bad_images_counts_and_reports_them(capsys, tmp_path, digits_model_dir):
    """--new-head gives the trained digits model a 3-class head; --skip-bad-images leaves the one corrupt file out,
    says so, and records it, in train and in eval."""
    data = _images(tmp_path / "data", ["a", "b", "c"], broken="broken.png")
    out = tmp_path / "flowers"
    code, stdout, err = _run(capsys, ["train", digits_model_dir, "--data", f"imagefolder:{data}", "--epochs", "1",
                                      "--new-head", "--skip-bad-images", "--out", out])
    assert code == 0, err
    assert "left out 1 unreadable image(s)" in stdout and "broken.png" in stdout
    cfg = json.loads((out / "vitdeploy.json").read_text())
    assert cfg["train"]["head_reset"] is True and cfg["classes"] == ["a", "b", "c"]
    assert [Path(f).name for f in cfg["train"]["skipped_images"]] == ["broken.png"]  # one folder serves both splits
    code, stdout, err = _run(capsys, ["eval", out, "--data", f"imagefolder:{data}", "--skip-bad-images",
                                      "--out", tmp_path / "eval.json"])
    assert code == 0, err
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["n"] == 9 and [Path(f).name for f in record["skipped_images"]] == ["broken.png"]


def test_a_fresh_model_gets_a_head_for_the_data(capsys, tmp_path):
    data = _images(tmp_path / "data", ["x", "y"])
    code, _, err = _run(capsys, ["train", "vit_digits", "--data", f"imagefolder:{data}", "--epochs", "1",
                                 "--out", tmp_path / "m"])
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "vitdeploy.json").read_text())["classes"] == ["x", "y"]


# --------------------------------------------------------------------------------------- profile_engine
@pytest.fixture(scope="module")
def pe():
    spec = importlib.util.spec_from_file_location("profile_engine", ROOT / "profiling" / "profile_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_engine_finds_the_dla_core(pe, tmp_path):
    """A DLA engine must run with runtime.DLA_core set: from --dla-core, the engine's record, or the target's core
    for fp16/int8 engines (vitdeploy keeps fp32 on the GPU)."""
    deploy = tmp_path / "deploy"
    (deploy / "engines").mkdir(parents=True)
    (deploy / "export.json").write_text(json.dumps({
        "target": {"name": "jetson-orin-nano", "dla_core": 1},
        "engines": [{"file": "model.int8.b1.plan", "dla_core": 0}]}))
    assert pe.dla_core_of(deploy / "model.int8.b1.plan") == 0  # its own record wins
    assert pe.dla_core_of(deploy / "engines" / "model.fp16.b8.plan") == 1  # built on the board by the script
    assert pe.dla_core_of(deploy / "model.fp32.b8.plan") is None
    assert pe.dla_core_of(deploy / "model.fp32.b8.plan", 1) == 1
    assert pe.dla_core_of(tmp_path / "bare.fp16.plan") is None
    assert pe.parse_args(["m.plan", "--dla-core", "1"]).dla_core == 1


def test_profile_engine_sets_the_dla_core_before_deserialising():
    """Read off the source (TensorRT is not installed here): the assignment comes before the engine is loaded."""
    import ast

    tree = ast.parse((ROOT / "profiling" / "profile_engine.py").read_text())
    runner = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "EngineRunner")
    init = next(n for n in runner.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    src = ast.unparse(init)
    assert src.index("self.runtime.DLA_core = int(dla_core)") < src.index("deserialize_cuda_engine")


# ------------------------------------------------------------------------------------------------ help
def _commands(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


COMMANDS = [(" ".join(path), cmd) for path, cmd in _commands(cli)]


@pytest.mark.parametrize("name,cmd", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_help_ends_with_examples_that_parse(capsys, name, cmd):
    code, out, _ = _run(capsys, [*name.split(), "--help"])
    assert code == 0 and "Examples:" in out
    examples = [ln.strip() for ln in out[out.index("Examples:"):].splitlines() if ln.strip().startswith("vitdeploy ")]
    assert 1 <= len(examples) <= 2, out
    for line in examples:
        argv = shlex.split(line)[1:]
        target, args = cli, argv
        while hasattr(target, "commands") and args and args[0] in target.commands:  # walk down to the command
            target, args = target.commands[args[0]], args[1:]
        target.make_context(argv[0], list(args))  # unknown options or bad values raise here


def test_compress_and_export_help_list_what_is_packaged(capsys):
    from vitdeploy.compression.recipe import available_recipes
    from vitdeploy.deploy.targets import available_targets

    _, out, _ = _run(capsys, ["compress", "--help"])
    assert all(r in out for r in available_recipes()) and "Packaged recipes:" in out
    _, out, _ = _run(capsys, ["export", "--help"])
    assert all(t in out for t in available_targets()) and "Packaged targets:" in out


# ------------------------------------------------------------------------------------------------ docs
def _triton_examples(text):
    """(model name used, model names the export before it writes) for each Triton model named in a doc."""
    from vitdeploy.deploy.triton import safe_model_name

    found, produced = [], None
    for line in text.splitlines():
        m = re.search(r"vitdeploy export (\S+).*?--precision (\S+)", line)
        if m:
            base = safe_model_name(Path(m.group(1)).stem)
            produced = {f"{base}_{p}" for p in m.group(2).split(",")}
        for name in re.findall(r"v2/models/([A-Za-z0-9_.-]+)|perf_analyzer -m ([A-Za-z0-9_.-]+)", line):
            found.append(("".join(name), produced))
    return found


@pytest.mark.parametrize("doc", ["README.md", "docs/deployment.md"])
def test_triton_examples_name_the_models_the_export_writes(doc):
    found = _triton_examples((ROOT / doc).read_text())
    assert found, f"{doc} has no Triton example"
    for name, produced in found:
        assert produced and name in produced, (name, produced)


def test_the_triton_name_check_catches_a_wrong_name():
    assert _triton_examples("vitdeploy export runs/s40 --precision fp16 --out x\ncurl x/v2/models/vit_fp16/config") \
        == [("vit_fp16", {"s40_fp16"})]
