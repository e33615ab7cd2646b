"""`affseg train` end to end on tiny configurations: every method, a folder of PNG pairs, resume
after a real SIGKILL (final weights equal an uninterrupted run's), and 2-process DDP (both ranks
end with the same weights)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monai")
pytest.importorskip("nilearn")

from affseg.train import METHODS, TrainConfig, run  # noqa: E402

TINY = dict(size=32, channels=(4, 8, 16, 32, 64), batch_size=2, agcl_patch=4, agcl_per_class=4, agcl_queue=64,
            agcl_hard=8, agcl_mix=4, quiet=True)
TINY_ARGS = ["--size", "32", "--channels", "4", "8", "16", "32", "64", "--batch-size", "2", "--quiet", "--agcl-patch", "4",
             "--agcl-per-class", "4", "--agcl-queue", "64", "--agcl-hard", "8", "--agcl-mix", "4"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # the C++ CPU kernels serve backend="auto" on CPU
    return env


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_reports(method, tmp_path):
    frac = 0.1 if method in ("mean-teacher", "semi-agcl") else 1.0
    cfg = TrainConfig(method=method, steps=3, label_fraction=frac, out=str(tmp_path), **TINY)
    result = run(cfg)
    (res,) = result["runs"]
    assert res["steps"] == 3 and len(res["history"]) == 3
    assert all(np.isfinite(h["loss"]) for h in res["history"])
    if method in ("pdcr", "pdcr+uafs"):
        assert all("pdcr" in h for h in res["history"])
    if method == "semi-agcl":
        assert all("graph" in h and "mix" in h and "pseudo" in h for h in res["history"])
    summary = json.loads((tmp_path / "results.json").read_text())["summary"][0]
    assert summary["method"] == method and len(summary["dice"]["per_class"]) == 2
    assert 0 <= summary["dice"]["mean"][0] <= 1
    assert (tmp_path / "results.md").read_text().count("|") > 10
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert (tmp_path / "seed0" / "checkpoint.pt").exists() and (tmp_path / "seed0" / "model.pt").exists()


def test_folder_of_png_pairs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in ("images", "labels"):
        (tmp_path / "data" / d).mkdir(parents=True)
    for i in range(8):
        lab = np.zeros((40, 40), np.uint8)
        r, c = rng.integers(8, 32, 2)
        lab[r - 6:r + 6, c - 6:c + 6] = 1
        img = (lab * 120 + rng.normal(60, 20, lab.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "data" / "images" / f"case{i}.png")
        Image.fromarray(lab).save(tmp_path / "data" / "labels" / f"case{i}.png")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "affseg.train", "--data", str(tmp_path / "data"), "--steps", "2",
                           "--out", str(out), *TINY_ARGS], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| supervised |" in proc.stdout and "results.png" in proc.stdout
    summary = json.loads((out / "results.json").read_text())["summary"][0]
    assert summary["class_names"] and summary["labelled_cases"] >= 1


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    args = ["--method", "semi-agcl", "--label-fraction", "0.2", "--steps", "30", "--checkpoint-every", "3",
            *TINY_ARGS]
    full = tmp_path / "full"
    done = subprocess.run([sys.executable, "-m", "affseg.train", *args, "--out", str(full)], capture_output=True,
                          text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    ckpt = killed / "seed0" / "checkpoint.pt"
    # A real SIGKILL, sent by the run to itself right after its checkpoint at step >= 12 is on disk
    # (deterministic, unlike a kill from outside racing the steps).
    with open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.run([sys.executable, "-m", "affseg.train", *args, "--out", str(killed)],
                              stdout=subprocess.DEVNULL, stderr=err, env=dict(_env(), AFFSEG_KILL_AFTER_CHECKPOINT="12"),
                              timeout=600)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.err").read_text()[-3000:]
    state = torch.load(ckpt, weights_only=False)
    killed_at = state["step"]
    assert killed_at == 12 and not (killed / "seed0" / "model.pt").exists()

    resumed = subprocess.run([sys.executable, "-m", "affseg.train", *args, "--out", str(killed), "--resume"],
                             capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed semi-agcl seed 0 at step {killed_at}" in resumed.stdout  # not a silent restart from 0
    a, b = _weights(full / "seed0" / "model.pt"), _weights(killed / "seed0" / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    history = lambda p: json.loads((p / "results.json").read_text())["runs"]["semi-agcl"][0]["history"]  # noqa: E731
    assert [h["loss"] for h in history(full)] == [h["loss"] for h in history(killed)]
    # the first killed_at records are the killed run's own (its clock), kept through the resume
    assert [h["elapsed"] for h in history(killed)[:killed_at]] == [h["elapsed"] for h in state["history"]]


def test_resume_refuses_a_different_configuration(tmp_path):
    run(TrainConfig(method="supervised", steps=2, out=str(tmp_path), **TINY))
    with pytest.raises(ValueError, match="different configuration"):
        run(TrainConfig(method="supervised", steps=2, lr=0.5, out=str(tmp_path), resume=True, **TINY))


def test_ddp_two_cpu_processes_hold_the_same_weights(tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as sock:  # a free port: torchrun's --master_port=0 does not pick one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "affseg.train", "--method", "semi-agcl", "--label-fraction", "0.2", "--steps", "3",
           "--out", str(out), *TINY_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    d0 = (out / "seed0" / "weights_rank0.sha256").read_text()
    d1 = (out / "seed0" / "weights_rank1.sha256").read_text()
    assert d0 == d1 and len(d0.split()) == 3  # student, teacher and Semi-AGCL queue
    saved = _weights(out / "seed0" / "model.pt")
    assert saved and (out / "results.json").exists()


def test_demo_runs_its_three_methods(tmp_path, capsys):
    from affseg.train.demo import DEMO_METHODS, main

    assert main(steps=2, out=str(tmp_path), bench=False, quiet=True) == 0
    printed = capsys.readouterr().out
    for method in DEMO_METHODS:
        assert f"| {method} |" in printed
    assert "figure:" in printed and (tmp_path / "results.png").exists()


def test_cli_dispatches_train(tmp_path):
    from affseg.cli import main

    assert main(["train", "--method", "uafs", "--steps", "1", "--out", str(tmp_path), *TINY_ARGS]) == 0
    assert (tmp_path / "results.json").exists()


def test_3d_crops_and_sliding_window_evaluation(tmp_path):
    cfg = TrainConfig(method="pdcr+uafs", dims=3, crop=16, steps=2, out=str(tmp_path), **TINY)
    (res,) = run(cfg)["runs"]
    assert len(res["history"]) == 2 and np.isfinite(res["history"][-1]["loss"])
    assert res["test"]["cases"] >= 1 and res["examples"]["preds"][0].dim() == 3
