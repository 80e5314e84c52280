"""Every command run as a user runs it: the happy path end to end, and bad input ending in one line."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from vitdeploy.cli import main


def run(capsys, *args):
    """Run the CLI in-process through the same entry point as the console script."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_version_in_a_real_process():
    p = subprocess.run([sys.executable, "-m", "vitdeploy", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "vitdeploy, version" in p.stdout


def test_bad_input_in_a_real_process(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vitdeploy", "info", "swin_tiny_patch4_window7_224"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_info(capsys):
    code, out, _ = run(capsys, "info", "vit_digits", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["base"] == "vit_digits" and len(rec["blocks"]) == 6 and rec["input_size"] == [3, 32, 32]
    code, out, _ = run(capsys, "info", "deit_tiny_patch16_224")
    assert code == 0 and "M params" in out and "G MACs" in out


def test_pipeline_end_to_end(capsys, tmp_path, digits_model_dir):
    dense, small = digits_model_dir, tmp_path / "small"
    code, out, err = run(capsys, "compress", dense, "--recipe", "mlp-magnitude", "--data", "digits", "--out", small,
                         "--set", "finetune.epochs=1", "--set", "prune.rate=0.5")
    assert code == 0, err
    rep = json.loads((small / "compress.json").read_text())
    assert rep["params"]["after"] < rep["params"]["before"] and rep["macs"]["after"] < rep["macs"]["before"]
    assert rep["equivalence"]["max_abs_diff"] < 1e-4
    assert all(v is not None for v in rep["top1"].values())
    assert all(b["mlp_hidden"] % 8 == 0 and b["mlp_hidden"] < 384 for b in rep["kept"])

    code, out, err = run(capsys, "info", small, "--json")
    assert code == 0 and json.loads(out)["blocks"][0]["mlp_hidden"] == rep["kept"][0]["mlp_hidden"]

    for m in (dense, small):
        code, out, err = run(capsys, "export", m, "--out", m / "deploy")
        assert code == 0, err
        ex = json.loads((m / "deploy" / "export.json").read_text())
        art = ex["artifacts"][0]
        assert art["parity"]["max_abs_diff"] < 1e-4 and art["parity"]["top1_agreement"] == 1.0
        assert art["batch_symbolic"] and art["ops"].get("LayerNormalization") == 13 and "Pow" not in art["ops"]
        assert "digits val images" in ex["parity_inputs"]

    code, out, err = run(capsys, "eval", dense / "deploy", "--data", "digits", "--out", dense / "eval.json")
    assert code == 0, err
    ev = json.loads((dense / "eval.json").read_text())
    assert ev["n"] == 360 and 0.3 < ev["top1"] <= ev["top5"] <= 1.0
    code, out, err = run(capsys, "eval", small, "--data", "digits", "--reference", dense, "--out", small / "eval.json")
    assert code == 0, err
    ev2 = json.loads((small / "eval.json").read_text())
    assert ev2["backend"] == "torch-cpu" and 0 < ev2["top1_agreement"] <= 1 and ev2["cosine_mean"] > 0.5

    prof = tmp_path / "profile.json"
    code, out, err = run(capsys, "profile", dense / "deploy", small / "deploy", dense, "--backend", "ort-cpu,torch-cpu",
                         "--batch", "1,4", "--iters", "5", "--warmup", "2", "--threads", "1", "--out", prof)
    assert code == 0, err
    res = json.loads(prof.read_text())
    assert {(r["backend"], r["batch"]) for r in res["results"]} == {("ort-cpu", 1), ("ort-cpu", 4), ("torch-cpu", 1), ("torch-cpu", 4)}
    assert len(res["results"]) == 6 and res["host"]["cpu"]
    for r in res["results"]:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and r["throughput_ips"] > 0

    code, out, err = run(capsys, "report", dense, small, "--profile", prof, "--out", tmp_path / "report")
    assert code == 0, err
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| dense |" in md and "| small |" in md and "ort-cpu b4 p50 ms" in md
    rj = json.loads((tmp_path / "report" / "report.json").read_text())
    assert rj["runs"][1]["params"] < rj["runs"][0]["params"] and rj["runs"][1]["recipe"] == "mlp-magnitude"


def test_train_writes_a_model_dir(capsys, tmp_path):
    out = tmp_path / "m"
    code, stdout, err = run(capsys, "train", "vit_digits", "--data", "digits", "--out", out, "--epochs", "5", "--warmup-epochs", "0")
    assert code == 0, err
    cfg = json.loads((out / "vitdeploy.json").read_text())
    assert cfg["train"]["top1"] > 0.3 and cfg["data_config"]["input_size"] == [3, 32, 32]
    assert cfg["provenance"]["versions"]["torch"] and cfg["classes"] == [str(i) for i in range(10)]
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "vitdeploy.json"]


@pytest.fixture
def bad_files(tmp_path, digits_model_dir):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    bare = tmp_path / "bare.pth"
    torch.save({"w": torch.zeros(2)}, bare)
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text("prune:\n  rte: 0.3\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("prune: {rate: [\n")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in digits_model_dir.iterdir():
        if f.is_file():
            (damaged / f.name).write_bytes(f.read_bytes())
    w = damaged / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    wrong = tmp_path / "wrong.safetensors"
    save_file({"head.weight": torch.zeros(10, 8)}, str(wrong))
    return dict(corrupt=corrupt, bare=bare, unknown_key=unknown_key, broken=broken, damaged=damaged, wrong=wrong,
                model=digits_model_dir)


BAD = [
    ("unknown model", ["info", "vit_nonexistent_model"], "unknown model"),
    ("unsupported swin", ["info", "swin_tiny_patch4_window7_224"], "supports timm's VisionTransformer"),
    ("unsupported convnext", ["compress", "convnext_atto", "--recipe", "mlp-magnitude", "--out", "{out}"], "supports timm's VisionTransformer"),
    ("missing checkpoint", ["info", "vit_digits", "--checkpoint", "{tmp}/absent.safetensors"], "does not exist"),
    ("missing model path", ["export", "{tmp}/absent_dir/", "--out", "{out}"], "does not exist"),
    ("corrupt checkpoint", ["export", "{corrupt}", "--arch", "vit_digits", "--out", "{out}"], "not a readable safetensors"),
    ("bare checkpoint no arch", ["info", "{bare}"], "--arch"),
    ("checkpoint does not fit", ["info", "{wrong}", "--arch", "vit_digits"], "does not fit"),
    ("damaged model dir", ["export", "{damaged}", "--out", "{out}"], "damaged"),
    ("unknown recipe", ["compress", "{model}", "--recipe", "vtp-99", "--out", "{out}"], "unknown recipe"),
    ("unknown recipe key", ["compress", "{model}", "--recipe", "{unknown_key}", "--out", "{out}"], "unknown recipe key 'prune.rte'"),
    ("broken recipe", ["compress", "{model}", "--recipe", "{broken}", "--out", "{out}"], "not valid YAML"),
    ("impossible rate", ["compress", "{model}", "--recipe", "mlp-magnitude", "--set", "prune.rate=1.2", "--out", "{out}"], "prune.rate"),
    ("wrong type", ["compress", "{model}", "--recipe", "mlp-magnitude", "--set", "finetune.epochs=many", "--out", "{out}"], "finetune.epochs"),
    ("learned scores without data", ["compress", "{model}", "--recipe", "vtp-40", "--out", "{out}"], "needs --data"),
    ("learned scores, no sparsity", ["compress", "{model}", "--recipe", "vtp-40", "--set", "sparsity.epochs=0", "--out", "{out}"], "sparsity.epochs"),
    ("unknown data spec", ["train", "vit_digits", "--data", "mnist", "--out", "{out}"], "mnist"),
    ("unreadable data path", ["train", "vit_digits", "--data", "imagefolder:{tmp}/no_such_data", "--out", "{out}"], "does not exist"),
    ("eval unreadable data", ["eval", "{model}", "--data", "imagefolder:{tmp}/no_such_data", "--out", "{out}.json"], "does not exist"),
    ("batch 0", ["profile", "{model}", "--backend", "torch-cpu", "--batch", "0", "--out", "{out}.json"], "--batch"),
    ("batch not a number", ["profile", "{model}", "--backend", "torch-cpu", "--batch", "1,x", "--out", "{out}.json"], "--batch"),
    ("unknown backend", ["profile", "{model}", "--backend", "tensorflow", "--out", "{out}.json"], "unknown backend"),
    ("backend not installed", ["profile", "{model}", "--backend", "ort-cuda", "--out", "{out}.json"], "ort-cuda"),
    ("torch model on ort", ["profile", "{model}", "--backend", "ort-cpu", "--out", "{out}.json"], "export"),
    ("unknown precision", ["export", "{model}", "--precision", "int4", "--out", "{out}"], "precision"),
    ("old opset", ["export", "{model}", "--opset", "13", "--out", "{out}"], "opset"),
    ("report on a non-model dir", ["report", "{tmp}", "--out", "{out}"], "not a model dir"),
    ("missing option", ["train", "vit_digits", "--out", "{out}"], "--data"),
    ("unknown command", ["frobnicate"], "No such command"),
]


@pytest.mark.parametrize("case,args,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line(capsys, tmp_path, bad_files, case, args, match):
    out = tmp_path / "out"
    subs = {k: str(v) for k, v in bad_files.items()} | {"tmp": str(tmp_path), "out": str(out)}
    code, stdout, err = run(capsys, *[a.format(**subs) for a in args])
    assert code == 2, (case, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    assert not out.exists() and not (tmp_path / "out.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging leftovers


def test_pretrained_without_hub_fails_in_one_line(capsys, tmp_path, monkeypatch):
    from vitdeploy.models import arch

    monkeypatch.setattr(arch, "_hub_reachable", lambda *a, **k: False)  # this machine has no network anyway
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # and an empty cache
    code, _, err = run(capsys, "info", "deit_tiny_patch16_224", "--pretrained")
    assert code == 2 and err.count("\n") == 1 and "pretrained weights" in err and "not reachable" in err


def test_training_is_reproducible(capsys, tmp_path):
    """Same seed, same command: the same weights, bit for bit (the fresh model's init is seeded too)."""
    from safetensors.torch import load_file

    for name in ("a", "b"):
        torch.manual_seed(123 if name == "a" else 456)  # whatever state the process was in before
        code, _, err = run(capsys, "train", "vit_digits", "--data", "digits", "--out", tmp_path / name, "--epochs", "1")
        assert code == 0, err
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_and_profile_take_a_bare_checkpoint(capsys, tmp_path, digits_model_dir):
    from vitdeploy.models import load_model

    state = load_model(str(digits_model_dir)).model.state_dict()
    ckpt = tmp_path / "weights.pth"
    torch.save({"model": state}, ckpt)
    code, out, err = run(capsys, "eval", ckpt, "--arch", "vit_digits", "--data", "digits", "--reference", digits_model_dir)
    assert code == 0, err
    assert "agreement 100.00 %" in out
    code, out, err = run(capsys, "profile", ckpt, "--arch", "vit_digits", "--backend", "torch-cpu", "--batch", "2",
                         "--iters", "3", "--warmup", "1")
    assert code == 0, err
