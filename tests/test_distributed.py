"""torchrun + DDP on CPU (gloo): two processes train exactly what one process with accumulation 2 trains."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import checkpoint
from tiny import GPT2_RECIPE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config", GPT2_RECIPE, "--block_size=16", "--embedding_dim=32", "--num_of_layers=2", "--num_of_heads=2",
         "--batch_size=8", "--eval_iters=2", "--sample_tokens=0", "--dtype=float32", "--eval_interval=8",
         "--dropout=0.0", "--gradient_accumulation_steps=2", "--lr_decay_iters=40", "--warmup_iters=4"]

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")


def run(corpus, out_dir, *extra, processes=1):
    if processes == 1:
        command = [sys.executable, "playground.py", "--device=cpu"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "playground.py"]
    result = subprocess.run([*command, corpus, f"--out_dir={out_dir}", *FLAGS, *extra], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def eval_lines(log):
    return [line.split(", val ")[0].split("\r")[-1] for line in log.splitlines() if "train loss" in line]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(words[(i * 7 + j * 3) % 5] for j in range(i % 6 + 2)) for i in range(3000)))
    return str(path)


def test_two_processes_equal_one_process_with_accumulation(corpus, tmp_path):
    log2 = run(corpus, tmp_path / "two", "--max_iters=24", processes=2)
    log1 = run(corpus, tmp_path / "one", "--max_iters=24")
    assert log2.count("global tokens per step") == 1  # only rank 0 prints
    assert eval_lines(log2) == eval_lines(log1) and len(eval_lines(log1)) == 3
    a = checkpoint.load_checkpoint(tmp_path / "one" / "model_checkpoint.tar")
    b = checkpoint.load_checkpoint(tmp_path / "two" / "model_checkpoint.tar")
    assert a["step"] == b["step"] == 24
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6)


def test_two_processes_equal_one_process_with_muon(corpus, tmp_path):
    """DDP hands every process the same averaged gradients, so each computes the same Muon update: no sharding."""
    run(corpus, tmp_path / "two", "--max_iters=16", "--optimizer=muon", processes=2)
    run(corpus, tmp_path / "one", "--max_iters=16", "--optimizer=muon")
    a = checkpoint.load_checkpoint(tmp_path / "one" / "model_checkpoint.tar")
    b = checkpoint.load_checkpoint(tmp_path / "two" / "model_checkpoint.tar")
    assert set(a["optimizer"]) == {"muon", "adamw"}
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6)


def test_a_time_budget_gives_every_process_the_same_step_count(corpus, tmp_path):
    """Each process times its own steps; they train the mean's step count together (unequal counts would hang)."""
    log = run(corpus, tmp_path / "two", "--max_minutes=0.05", "--schedule=wsd", "--lr_decay_iters=none",
              "--warmup_iters=none", processes=2)  # wsd: the plan is re-sized to the pace, every process agreeing
    steps = checkpoint.load_checkpoint(tmp_path / "two" / "model_checkpoint.tar")["step"]
    assert "re-sized to the pace" in log and f"done: {steps} steps" in log


def test_a_two_process_run_resumed_by_one_process(corpus, tmp_path):
    run(corpus, tmp_path / "mixed", "--max_iters=16", processes=2)
    log = run(corpus, tmp_path / "mixed", "--max_iters=24", "--resume")
    assert "steps 16 -> 24" in log
    run(corpus, tmp_path / "straight", "--max_iters=24")
    a = checkpoint.load_checkpoint(tmp_path / "mixed" / "model_checkpoint.tar")
    b = checkpoint.load_checkpoint(tmp_path / "straight" / "model_checkpoint.tar")
    assert a["step"] == 24
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6)


def test_a_bad_corpus_gives_every_process_the_same_line(tmp_path):
    """A missing corpus is refused before the process group forms; one too short, found by rank 0 while it builds
    the caches, is sent to the others. Each rank says the same thing, none dies inside gloo."""
    missing, short = tmp_path / "missing.txt", tmp_path / "short.txt"
    short.write_text("too short for a block\n")
    for corpus, message in ((missing, f"corpus file not found: {missing}"), (short, "fewer than block_size + 1")):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "playground.py", str(corpus), f"--out_dir={tmp_path / 'out'}", *FLAGS], cwd=ROOT,
                                capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "SCRATCHGPT_CACHE": str(tmp_path / "c")})
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        # Both ranks fail with this line; once the first has exited, torchrun may stop the other before it prints
        # (on a busy machine it often does), so every line printed must be this one, and there is at least one.
        assert 1 <= len(lines) <= 2 and len(set(lines)) == 1 and message in lines[0], result.stderr[-3000:]
        assert "gloo" not in result.stderr.lower() and "ProcessGroup" not in result.stderr
