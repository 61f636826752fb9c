"""Issue 11, "nothing lost, ever": each fault or bad input of a hostile run, reproduced, answered with one line.

Every case checks the exit status, the one line on stderr, and that the files already there are byte for byte
what they were (their hashes). Tests run as root, whom permission bits do not stop, so an unwritable folder is a path
under a regular file or under /proc, and a full disk is a monkeypatched torch.save.
"""
import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

import checkpoint
import classify
import generate
import playground
import preflight
import sampling
from config import ModelConfig, TrainConfig, UserError, load_config, run_main
from tokenizer import TokenizerError
from tiny import TINY

ROOT = Path(__file__).parent.parent


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: a cache of its own per test


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(0)
    words = ["the cat", "a dog", "sees", "loves", "the fish.", "a bone."]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(4)) for _ in range(800)) + "\n")
    return str(path)


@pytest.fixture
def finished_run(corpus, tmp_path):
    """out_dir of a finished 10-step run: model_checkpoint.tar, best_checkpoint.tar and curves.png (pictures.py)."""
    out = tmp_path / "run"
    playground.main([corpus, f"--out_dir={out}", *TINY, "--max_iters=10", "--eval_interval=5"])
    return out


def hashes(folder) -> dict:
    """{file name: sha256} of every file in `folder` (temporary files included: none may be left behind)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def fails(capsys, main, argv, code=1) -> str:
    """Run a script's main under the shared wrapper: exit `code`, exactly one line on stderr. Returns the line."""
    with pytest.raises(SystemExit) as info:
        run_main(lambda: main(argv), user_errors=(TokenizerError,))
    assert info.value.code == code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err, err
    if code == 1:
        assert err.startswith("error: "), err
    return err


# --- work lost or a false claim


def test_a_fresh_run_never_replaces_an_earlier_runs_checkpoints(capsys, corpus, finished_run):
    before = hashes(finished_run)
    err = fails(capsys, playground.main, [corpus, f"--out_dir={finished_run}", *TINY, "--max_iters=1"])
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err and "--out_dir" in err
    assert hashes(finished_run) == before
    err = fails(capsys, playground.main, [corpus, f"--out_dir={finished_run}", *TINY, "--resume", "--overwrite"])
    assert "give one of them" in err and hashes(finished_run) == before
    playground.main([corpus, f"--out_dir={finished_run}", *TINY, "--max_iters=2", "--eval_interval=100",
                     "--overwrite"])
    assert "deleted the earlier run's" in capsys.readouterr().out
    assert set(hashes(finished_run)) == {"model_checkpoint.tar", "best_checkpoint.tar", "curves.png"}
    assert checkpoint.load_checkpoint(finished_run / "model_checkpoint.tar")["step"] == 2
    assert checkpoint.load_checkpoint(finished_run / "best_checkpoint.tar")["step"] == 2  # the old best is gone
    playground.main([corpus, f"--out_dir={finished_run}", *TINY, "--max_iters=3", "--resume"])  # resumes, no delete
    assert "deleted" not in capsys.readouterr().out


def test_resume_never_replaces_a_better_best_checkpoint(corpus, finished_run):
    """Killed after best_checkpoint.tar but before model_checkpoint.tar: the best on disk still outranks the run."""
    best = finished_run / "best_checkpoint.tar"
    record = checkpoint.LanguageModelCheckpoint.load(best)
    record.best_val_loss = 0.01  # better than this tiny run will ever do
    record.save(best)
    before = hashes(finished_run)["best_checkpoint.tar"]
    playground.main([corpus, f"--out_dir={finished_run}", "--max_iters=20", "--resume"])
    assert hashes(finished_run)["best_checkpoint.tar"] == before


def poison_weights_at(monkeypatch, bad_step: int):
    """From optimizer step `bad_step` on, the update leaves nan in the weights while the loss is still finite."""
    real = playground.GPT.configure_optimizer

    def configure(self, *args, **kwargs):
        optimizer = real(self, *args, **kwargs)
        step, calls = optimizer.step, []

        def poisoned_step(*a, **k):
            step(*a, **k)
            calls.append(1)
            if len(calls) >= bad_step:
                with torch.no_grad():
                    self.blocks[0].mlp.fc.weight[0, 0] = float("nan")

        optimizer.step = poisoned_step
        return optimizer

    monkeypatch.setattr(playground.GPT, "configure_optimizer", configure)


def test_divergence_never_writes_a_non_finite_checkpoint_and_says_what_is_kept(capsys, corpus, tmp_path,
                                                                                   monkeypatch):
    out = tmp_path / "out"
    poison_weights_at(monkeypatch, 3)
    err = fails(capsys, playground.main, [corpus, f"--out_dir={out}", *TINY, "--max_iters=10",
                                          "--checkpoint_interval=1", "--eval_interval=1"])
    assert "weights became nan or inf at step 3" in err and "step 2) is kept as it was" in err, err
    assert "--learning_rate" in err
    for name in ("model_checkpoint.tar", "best_checkpoint.tar"):
        state = checkpoint.load_checkpoint(out / name)
        assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values())
    fresh = tmp_path / "fresh"
    err = fails(capsys, playground.main, [corpus, f"--out_dir={fresh}", *TINY, "--max_iters=10",
                                          "--checkpoint_interval=3", "--eval_interval=3"])
    assert "at step 3; no checkpoint of this run had been written" in err
    assert not list(fresh.glob("*.tar"))


def test_nan_loss_after_resume_keeps_the_checkpoint(capsys, corpus, finished_run, monkeypatch):
    before = hashes(finished_run)
    real_forward = playground.GPT.forward

    def poisoned(self, idx, targets=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, **kwargs)
        return logits, (loss * float("nan") if self.training and loss is not None else loss)

    monkeypatch.setattr(playground.GPT, "forward", poisoned)
    err = fails(capsys, playground.main, [corpus, f"--out_dir={finished_run}", "--resume", "--max_iters=12"])
    assert "loss became nan at step 10; nothing non-finite was saved" in err and "(step 10) is kept" in err
    assert hashes(finished_run) == before


def test_float16_on_a_cpu_is_refused_before_the_corpus_is_tokenized(capsys, corpus, tmp_path):
    err = fails(capsys, playground.main, [corpus, f"--out_dir={tmp_path / 'out'}", *TINY, "--dtype=float16"])
    assert "float16 needs a CUDA GPU" in err
    assert not list(Path(os.environ["SCRATCHGPT_CACHE"]).glob("tokens-*"))  # nothing was tokenized


def test_an_unusable_out_dir_or_cache_is_found_before_any_work(capsys, corpus, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = [(a_file, "is a file, not a folder"), (a_file / "out", "its parent"),
             ("/proc/scratchgpt-out", "cannot write to --out_dir")]
    for out, message in cases:
        err = fails(capsys, playground.main, [corpus, f"--out_dir={out}", *TINY, "--max_iters=5"])
        assert message in err and str(out) in err and "choose another --out_dir" in err
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(a_file))
    err = fails(capsys, playground.main, [corpus, f"--out_dir={tmp_path / 'out'}", *TINY, "--max_iters=5"])
    assert "the cache folder" in err and "SCRATCHGPT_CACHE" in err
    assert a_file.read_text() == "not a folder" and not (tmp_path / "cache").exists()  # nothing was tokenized
    monkeypatch.setattr(preflight.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))  # a read-only mount
    err = fails(capsys, classify.main, ["train", "--out_dir", str(tmp_path / "ro"), "--checkpoint", "none.tar"])
    assert "cannot write to --out_dir" in err and "Read-only file system" in err


INTERRUPT_INSIDE_TORCH_SAVE = """
import os, signal, sys, time, torch
import playground
from config import run_main
from tokenizer import TokenizerError
real_save = torch.save
def save(obj, f, *args, **kwargs):  # torch.save receives Ctrl-C halfway through writing, as 2 of 13 interrupts did
    f.write(b"PK\\x03\\x04 half")
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the signal arrives while "inside" the writer
    f.seek(0)
    f.truncate()
    real_save(obj, f, *args, **kwargs)
torch.save = save
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal; a job started with & inherits it ignored
run_main(lambda: playground.main(sys.argv[1:]), user_errors=(TokenizerError,))
"""


def test_ctrl_c_inside_torch_save_is_interrupted_exit_130_and_the_checkpoint_loads(corpus, finished_run):
    # In a process of its own that handles Ctrl-C as a terminal's does: a test run started in the background (`&`)
    # inherits SIGINT ignored, and a process that ignores Ctrl-C rightly is not interrupted by it.
    result = subprocess.run([sys.executable, "-c", INTERRUPT_INSIDE_TORCH_SAVE, corpus, f"--out_dir={finished_run}",
                             "--resume", "--max_iters=12", "--checkpoint_interval=1"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 130 and result.stderr.strip() == "interrupted", result.stderr[-2000:]
    assert set(hashes(finished_run)) == {"model_checkpoint.tar", "best_checkpoint.tar", "curves.png"}  # no temp file
    assert checkpoint.load_checkpoint(finished_run / "model_checkpoint.tar")["step"] == 11  # the write completed


def test_a_char_corpus_without_newline_samples_from_a_token_it_has(capsys, tmp_path):
    path = tmp_path / "no_newline.txt"
    path.write_text("abcab cabba " * 100)
    playground.main([str(path), f"--out_dir={tmp_path / 'out'}", *TINY, "--max_iters=3", "--sample_tokens=20"])
    assert "--- sample ---" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["\0" * 500, "\n" * 500], ids=["NUL", "newline"])
def test_a_corpus_of_one_distinct_token_is_refused(capsys, tmp_path, text):
    path = tmp_path / "one.txt"
    path.write_text(text)
    err = fails(capsys, playground.main, [str(path), f"--out_dir={tmp_path / 'out'}", *TINY, "--max_iters=3"])
    assert "1 token repeated" in err and "at least two different characters" in err
    assert not list((tmp_path / "out").glob("*.tar"))


# --- tracebacks where one line belongs


@pytest.mark.parametrize("flag, message", [
    ("--seed=-1", "seed=-1 must be a whole number in [0, 2**63)"),
    ("--seed=1e30", "must be a whole number in [0, 2**63)"),
    ("--beta1=1.5", "beta1=1.5 must be in [0, 1)"),
    ("--beta2=-0.5", "beta2=-0.5 must be in [0, 1)"),
    ("--learning_rate=nan", "learning_rate=nan must be a finite number"),
    ("--learning_rate=inf", "learning_rate=inf must be a finite number"),
    ("--weight_decay=nan", "weight_decay=nan must be a finite number"),
    ("--min_lr=nan", "min_lr=nan must be a finite number"),
    ("--grad_clip=inf", "grad_clip=inf must be a finite number"),
    ("--dropout=nan", "dropout=nan must be a finite number"),
    ("--val_fraction=nan", "val_fraction=nan must be a finite number"),
    ("--decay_fraction=-0.1", "decay_fraction=-0.1 must be in [0, 1]"),
    ("--optimizer=sgd", "argument --optimizer: invalid choice: 'sgd' (choose from 'adamw', 'muon')"),
    ("--muon_learning_rate=0", "muon_learning_rate=0.0 must be positive"),
])
def test_settings_that_mean_nothing_are_one_line(capsys, corpus, tmp_path, flag, message):
    assert message in fails(capsys, playground.main, [corpus, f"--out_dir={tmp_path / 'o'}", flag])


@pytest.mark.parametrize("flag, message", [
    ("--temperature=nan", "temperature=nan must be a finite number"),
    ("--temperature=inf", "temperature=inf must be a finite number"),
    ("--top_p=nan", "top_p=nan must be a finite number"),
    ("--seed=-1", "seed=-1 must be a whole number"),
])
def test_generate_settings_that_mean_nothing_are_one_line(capsys, flag, message):
    assert message in fails(capsys, generate.main, [flag])


def test_classify_settings_that_mean_nothing_are_one_line(capsys):
    assert "learning_rate=nan must be a finite" in fails(capsys, classify.main, ["train", "--learning_rate=nan"])
    assert "seed=-1 must be a whole number" in fails(capsys, classify.main, ["train", "--seed=-1"])


def test_a_non_utf8_yaml_config_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("# caf\xe9\nmax_iters: 5\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"config file .*run\.yaml is not UTF-8 \(invalid byte 0xe9 at offset 5\)"):
        load_config(["--config", str(path)], (ModelConfig, TrainConfig), "test")


def edited(state: dict, **changes) -> dict:
    return {**{k: v for k, v in state.items() if k not in ("format", "version")}, **changes}


def test_broken_checkpoints_are_one_line_everywhere(capsys, corpus, finished_run, tmp_path):
    state = checkpoint.load_checkpoint(finished_run / "model_checkpoint.tar")
    no_model = tmp_path / "no_model.tar"
    checkpoint.save_checkpoint(no_model, {k: v for k, v in edited(state).items() if k != "model"})
    wider = tmp_path / "wider.tar"
    checkpoint.save_checkpoint(wider, edited(state, model_config={**state["model_config"], "embedding_dim": 64}))
    noise = tmp_path / "noise.tar"
    noise.write_bytes(random.Random(0).randbytes(4096))
    before = hashes(tmp_path)
    assert "has no model: it is an incomplete" in fails(capsys, generate.main, [f"--checkpoint={no_model}"])
    assert "weights do not fit its model_config (size mismatch" in fails(capsys, generate.main,
                                                                          [f"--checkpoint={wider}"])
    err = fails(capsys, generate.main, [f"--checkpoint={noise}"])
    assert "not a readable checkpoint" in err and "zip archive" in err and "2.6" not in err
    assert "weights do not fit" in fails(capsys, classify.main, ["train", "--checkpoint", str(wider),
                                                                 "--out_dir", str(tmp_path / "c")])
    assert hashes(tmp_path) == before
    for broken in (no_model, wider):  # the same files as model_checkpoint.tar of a run to resume
        run = tmp_path / f"resume_{broken.stem}"
        run.mkdir()
        (run / "model_checkpoint.tar").write_bytes(broken.read_bytes())
        err = fails(capsys, playground.main, [corpus, f"--out_dir={run}", "--resume", "--max_iters=20"])
        assert "has no model" in err or "weights do not fit" in err
        assert hashes(run) == {"model_checkpoint.tar": before[broken.name]}


def test_a_pickle_that_runs_code_is_refused_in_one_line(capsys, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = tmp_path / "evil.tar"
    torch.save({"format": "scratchgpt-lm", "model": Evil()}, path)
    err = fails(capsys, generate.main, [f"--checkpoint={path}"])
    assert "could run code" in err and not (tmp_path / "pwned").exists()


def full_disk(monkeypatch, error: Exception):
    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the start of a zip")
        raise error

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_while_checkpointing_is_one_line_and_the_previous_file_is_intact(capsys, corpus, finished_run,
                                                                                       monkeypatch):
    before = hashes(finished_run)
    full_disk(monkeypatch, OSError(errno.EFBIG, "File too large"))
    err = fails(capsys, playground.main, [corpus, f"--out_dir={finished_run}", "--resume", "--max_iters=11"])
    assert "cannot write" in err and "File too large; the previous" in err and "intact" in err
    assert hashes(finished_run) == before


def test_a_full_disk_while_saving_a_classifier_is_one_line(capsys, tmp_path, monkeypatch):
    from tokenizer import CharTokenizer

    tokenizer = CharTokenizer.train("abxy \n")
    model = playground.GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, embedding_dim=16,
                                       num_of_layers=1, num_of_heads=2))
    lm = str(tmp_path / "lm.tar")
    checkpoint.LanguageModelCheckpoint.of(model, tokenizer).save(lm)
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"{'ab' * (i % 5 + 1)},a\n{'xy' * (i % 5 + 1)},x\n" for i in range(8)))
    data = str(data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "classifier.tar").write_bytes(b"the previous classifier")
    before = hashes(out)
    full_disk(monkeypatch, RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 36"))
    err = fails(capsys, classify.main, ["train", data, "--checkpoint", lm, "--out_dir", str(out), "--max_steps=2",
                                        "--device=cpu", "--dtype=float32", "--overwrite"])
    assert "cannot write" in err and "unexpected pos 64 vs 36; the previous classifier.tar is intact" in err
    assert hashes(out) == before


@pytest.mark.parametrize("flags, message", [
    (["--embedding_dim=65536"], "--embedding_dim"),
    (["--sample_tokens=1e11"], "--sample_tokens=100000000000 needs at least"),
])
def test_sizes_the_machine_cannot_hold_are_refused_before_any_work(capsys, corpus, tmp_path, flags, message):
    err = fails(capsys, playground.main, [corpus, f"--out_dir={tmp_path / 'o'}", *flags])
    assert message in err and "GiB available" in err
    assert not list((tmp_path / "cache").glob("tokens-*"))  # not even tokenized


def test_generate_refuses_a_sample_it_cannot_hold(capsys, finished_run):
    err = fails(capsys, generate.main, [f"--out_dir={finished_run}", "--max_new_tokens=1e10"])
    assert "--max_new_tokens=10000000000 needs at least" in err


def test_sampling_holds_only_the_window_not_every_new_token(monkeypatch):
    torch.manual_seed(0)
    model = playground.GPT(ModelConfig(vocab_size=40, block_size=16, embedding_dim=32, num_of_layers=2,
                                       num_of_heads=4)).eval()
    idx = torch.randint(0, 40, (2, 5))
    for kv_cache in (True, False):
        expected = model.generate(idx, 100, greedy=True, kv_cache=kv_cache)
        monkeypatch.setattr(sampling, "PREALLOCATE", 3)  # the buffer fills and moves its window many times
        assert torch.equal(model.generate(idx, 100, greedy=True, kv_cache=kv_cache), expected)
        monkeypatch.undo()


def test_train_tokenizer_ctrl_c_is_interrupted_exit_130(tmp_path, corpus):
    code = ("import runpy, sys, tokenizer\n"
            "def interrupted(*args, **kwargs): raise KeyboardInterrupt\n"
            "tokenizer.train_tokenizer = interrupted\n"
            "sys.argv = ['train_tokenizer.py', sys.argv[1], '100', 'bpe', '--out', sys.argv[2]]\n"
            "runpy.run_path('tokenizer/train_tokenizer.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code, corpus, str(tmp_path / "t.json")], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 130 and result.stderr.strip() == "interrupted", result.stderr


@pytest.mark.parametrize("label", [[1, 2], {"a": 1}])
def test_jsonl_labels_must_be_strings_or_numbers(tmp_path, label):
    import classifier_data as cd

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "good", "label": "pos"}) + "\n" + json.dumps({"text": "x", "label": label}))
    with pytest.raises(UserError, match=r"d.jsonl line 2: label is a JSON (list|object) .*strings or numbers"):
        cd.read_examples(str(path), "text", "label")


# --- kill -9 while checkpointing every step


@pytest.mark.slow
def test_kill_9_at_random_moments_always_leaves_a_checkpoint_that_resumes(corpus, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "playground.py", corpus, f"--out_dir={out}", *TINY, "--checkpoint_interval=1",
               "--eval_interval=3", "--max_iters=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(11)
    steps = []
    for attempt in range(3):
        process = subprocess.Popen(command + (["--resume"] if attempt else []), cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            start = steps[-1] if steps else 0
            while time.monotonic() < deadline and process.poll() is None:  # wait until this run has saved once
                path = out / "model_checkpoint.tar"
                if path.exists() and checkpoint.load_checkpoint(path, required=("step",))["step"] > start:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            process.kill()  # SIGKILL: no handler runs, no cleanup
            process.wait()
        state = checkpoint.LanguageModelCheckpoint.load(out / "model_checkpoint.tar",
                                                        required=checkpoint.LanguageModelCheckpoint.RESUME)
        steps.append(state.step)
    assert steps == sorted(steps) and steps[0] > 0
    playground.main([corpus, f"--out_dir={out}", "--resume", f"--max_iters={steps[-1] + 2}"])  # continues
    assert checkpoint.load_checkpoint(out / "model_checkpoint.tar")["step"] == steps[-1] + 2
