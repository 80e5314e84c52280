"""Resuming after a crash or a kill -9, and DDP under torchrun: both must reproduce the uninterrupted single-process
run (same top-1, weights within float tolerance; on CPU resuming is bitwise)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import BatchSampler, RandomSampler

from conftest import tiny_vit
from vitdeploy.compression.checkpoint import RunCheckpoints
from vitdeploy.compression.recipe import TrainCfg
from vitdeploy.compression.train import fit
from vitdeploy.data import digits_data_config, load_dataset, make_loader
from vitdeploy.data.loaders import calibration_subset
from vitdeploy.distributed import ShardedBatchSampler
from vitdeploy.errors import CheckpointError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
TRAIN = ["train", "vit_digits", "--data", "digits", "--epochs", "2", "--warmup-epochs", "1"]


class Crash(Exception):
    pass


def _fit_tiny(out: Path, crash_after_saves: int | None = None) -> torch.nn.Module:
    """Two epochs of a tiny ViT (with dropout, so the RNG matters) on 192 digits, checkpointing every 4 steps."""
    ds = calibration_subset(load_dataset("digits", "train", digits_data_config((3, 32, 32))), 192)
    torch.manual_seed(0)
    model = tiny_vit(depth=1, embed_dim=32, drop_rate=0.2)
    loader = make_loader(ds, 32, shuffle=True, seed=0, drop_last=True)  # 6 steps per epoch
    phase = RunCheckpoints(out, {"test": 1}, resume=True, every=4).phase("train")
    if crash_after_saves is not None:
        save, count = phase.save, [0]

        def crashing_save(state):
            save(state)
            count[0] += 1
            if count[0] == crash_after_saves:
                raise Crash

        phase.save = crashing_save
    try:
        fit(model, loader, None, TrainCfg(epochs=2, lr=1e-3, batch_size=32), checkpoint=phase)
    except Crash:
        return None
    return model


@pytest.mark.parametrize("saves,where", [(1, "mid-epoch (step 4 of 6)"), (2, "end of epoch 1"), (3, "mid-epoch 2")])
def test_fit_resumes_bitwise(tmp_path, saves, where):
    ref = _fit_tiny(tmp_path / "ref")
    assert _fit_tiny(tmp_path / "run", crash_after_saves=saves) is None
    assert (tmp_path / "run.ckpt" / "train.pt").exists()
    got = _fit_tiny(tmp_path / "run")
    for (name, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resuming from {where}"


def test_restarting_without_the_checkpoint_state_would_differ(tmp_path):
    """The bitwise test above can fail: a run that restarts the crashed phase from scratch on the partly trained
    weights (what a resume without optimiser, schedule and RNG state amounts to) ends elsewhere."""
    ref = _fit_tiny(tmp_path / "ref")
    _fit_tiny(tmp_path / "run", crash_after_saves=1)
    state = torch.load(tmp_path / "run.ckpt" / "train.pt", weights_only=True)
    (tmp_path / "run.ckpt" / "train.pt").unlink()
    ds = calibration_subset(load_dataset("digits", "train", digits_data_config((3, 32, 32))), 192)
    model = tiny_vit(depth=1, embed_dim=32, drop_rate=0.2)
    model.load_state_dict(state["model"])
    fit(model, make_loader(ds, 32, shuffle=True, seed=0, drop_last=True), None, TrainCfg(epochs=2, lr=1e-3, batch_size=32))
    assert any(not torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))


def test_checkpoints_of_another_run_are_refused(tmp_path):
    out = tmp_path / "m"
    RunCheckpoints(out, {"recipe": "a"}, resume=False).start()
    with pytest.raises(CheckpointError, match="different run .recipe differs"):
        RunCheckpoints(out, {"recipe": "b"}, resume=True)
    with pytest.raises(CheckpointError, match="earlier run: pass --resume"):
        RunCheckpoints(out, {"recipe": "a"}, resume=False)
    (out.parent / "m.ckpt" / "train.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        RunCheckpoints(out, {"recipe": "a"}, resume=True).phase("train").load()


def test_sharded_batches_reassemble_the_single_process_batches():
    data = list(range(50))
    single = list(BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(3)), 8, True))
    shards = [list(ShardedBatchSampler(BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(3)), 8, True),
                                       r, 2)) for r in range(2)]
    for b, (s0, s1) in enumerate(zip(*shards)):
        assert sorted(s0 + s1) == sorted(single[b]) and len(s0) == len(s1) == 4


# ------------------------------------------------------------------------------------------ through the CLI


def _cli(*args: str, torchrun: int = 0) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)] \
        if torchrun else [sys.executable]
    return [*launcher, "-m", "vitdeploy", *args]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def _kill_when(cmd: list[str], cwd: Path, ready) -> None:
    """Start `cmd` and SIGKILL it as soon as `ready()` holds."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _weights_close(a: Path, b: Path, atol: float) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= atol, diff
    return diff


def _top1(model_dir: Path, key: str) -> float:
    cfg = json.loads((model_dir / "vitdeploy.json").read_text())
    return cfg[key]["top1"] if key == "train" else cfg[key]["top1"]["after"]


def test_train_killed_mid_epoch_then_resumed_matches(tmp_path):
    _run(_cli(*TRAIN, "--out", "ref"), tmp_path)
    ckpt = tmp_path / "run.ckpt" / "train.pt"
    _kill_when(_cli(*TRAIN, "--out", "run", "--checkpoint-every", "5"), tmp_path, ckpt.exists)
    assert not (tmp_path / "run").exists()
    assert torch.load(ckpt, weights_only=True)["step"] > 0  # killed in the middle of an epoch
    _run(_cli(*TRAIN, "--out", "run", "--checkpoint-every", "5", "--resume"), tmp_path)
    assert _weights_close(tmp_path / "ref", tmp_path / "run", atol=0.0) == 0.0
    assert _top1(tmp_path / "ref", "train") == _top1(tmp_path / "run", "train")
    assert not (tmp_path / "run.ckpt").exists()  # checkpoints go once the model dir is written


def test_compress_killed_during_finetune_then_resumed_matches(tmp_path, digits_model_dir):
    args = ["compress", str(digits_model_dir), "--recipe", "vtp-40", "--data", "digits", "--set", "sparsity.epochs=1",
            "--set", "finetune.epochs=2", "--set", "checkpoint_every=7"]
    _run(_cli(*args, "--out", "ref"), tmp_path)
    finetune = tmp_path / "run.ckpt" / "finetune.pt"
    _kill_when(_cli(*args, "--out", "run"), tmp_path, finetune.exists)
    assert not (tmp_path / "run").exists() and (tmp_path / "run.ckpt" / "sparsity.pt").exists()
    refused = subprocess.run(_cli(*args, "--out", "run"), cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr and not (tmp_path / "run").exists()
    _run(_cli(*args, "--out", "run", "--resume"), tmp_path)
    _weights_close(tmp_path / "ref", tmp_path / "run", atol=0.0)
    assert _top1(tmp_path / "ref", "compress") == _top1(tmp_path / "run", "compress")


def test_ddp_two_processes_match_one(tmp_path):
    _run(_cli(*TRAIN, "--out", "one"), tmp_path)
    p = _run(_cli(*TRAIN, "--out", "two", torchrun=2), tmp_path)
    assert p.stdout.count("wrote two") == 1  # only rank 0 prints and writes
    diff = _weights_close(tmp_path / "one", tmp_path / "two", atol=1e-3)
    one, two = (json.loads((tmp_path / d / "vitdeploy.json").read_text())["train"] for d in ("one", "two"))
    assert one["top1"] == two["top1"]
    assert abs(one["history"][-1]["loss"] - two["history"][-1]["loss"]) < 1e-4  # reduced across ranks
    assert diff < 1e-3


def test_ddp_compress_synchronises_the_scores(tmp_path, digits_model_dir):
    """The learned VTP scores live in the model, so DDP averages their gradients: two ranks pick the same plan
    as one process."""
    args = ["compress", str(digits_model_dir), "--recipe", "vtp-40", "--data", "digits", "--set", "sparsity.epochs=1",
            "--set", "finetune.epochs=1"]
    _run(_cli(*args, "--out", "one"), tmp_path)
    _run(_cli(*args, "--out", "two", torchrun=2), tmp_path)
    one, two = (json.loads((tmp_path / d / "compress.json").read_text()) for d in ("one", "two"))
    assert one["kept"] == two["kept"] and one["plan"] == two["plan"]
    _weights_close(tmp_path / "one", tmp_path / "two", atol=1e-3)


def test_mcf_killed_between_recoveries_then_resumed_matches(tmp_path, digits_model_dir):
    """MCF's recovery epochs are phases too: a run killed after block 4's recovery redoes only what was lost."""
    args = ["compress", str(digits_model_dir), "--recipe", "mcf", "--data", "digits", "--calib-images", "64",
            "--set", "finetune.epochs=1"]
    _run(_cli(*args, "--out", "ref"), tmp_path)
    _kill_when(_cli(*args, "--out", "run"), tmp_path, (tmp_path / "run.ckpt" / "mcf-recovery-4.pt").exists)
    _run(_cli(*args, "--out", "run", "--resume"), tmp_path)
    _weights_close(tmp_path / "ref", tmp_path / "run", atol=0.0)
    ref, run = (json.loads((tmp_path / d / "compress.json").read_text()) for d in ("ref", "run"))
    assert ref["mcf"] == run["mcf"] and ref["top1"] == run["top1"]
