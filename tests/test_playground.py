"""playground.py: the schedule, an end-to-end run, checkpoints, exact resume, and every bad input's one-line error."""
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
import data
import playground
import training
from config import TrainConfig, run_main
from tokenizer import TokenizerError
from tiny import TINY



pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: a cache of its own per test


@pytest.fixture
def corpus(tmp_path):
    """A small, learnable corpus: sentences from a tiny grammar."""
    rng = random.Random(0)
    subjects, verbs, objects = ["the cat", "a dog", "my friend", "the king"], ["sees", "loves", "eats"], \
        ["the fish.", "a bone.", "the crown.", "some bread."]
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}" for _ in range(1500)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def train(corpus, out_dir, *flags):
    playground.main([corpus, f"--out_dir={out_dir}", *TINY, *flags])


def cli_error(capsys, argv) -> str:
    """Run playground's command line; it must exit 1 with exactly one line on stderr. Returns that line."""
    with pytest.raises(SystemExit) as info:
        run_main(lambda: playground.main(argv), user_errors=(TokenizerError,))
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --- the learning-rate schedule


def schedule(**settings):
    return training.resolve_schedule(TrainConfig(**settings))


def test_schedule_corners():
    cfg = schedule(max_iters=1000, learning_rate=1e-3, warmup_iters=100, min_lr=1e-4)
    lrs = [training.learning_rate(s, cfg) for s in range(1200)]
    assert 0 < lrs[0] < 1e-5 * 2  # step 0 already learns a little
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101]))  # warmup rises
    assert lrs[100] == pytest.approx(1e-3)  # end of warmup = peak
    assert all(a >= b for a, b in zip(lrs[100:1000], lrs[101:1001]))  # then only decays
    assert lrs[999] == pytest.approx(1e-4, rel=1e-3) and lrs[1000] == lrs[1199] == 1e-4  # floor at the end


def test_wsd_schedule_warms_up_as_cosine_holds_the_peak_then_falls_to_min_lr():
    settings = dict(max_iters=1000, learning_rate=1e-3, warmup_iters=100, min_lr=1e-4)
    cosine, wsd = schedule(**settings), schedule(**settings, schedule="wsd")  # decay_fraction 0.2 by default
    lrs = [training.learning_rate(s, wsd) for s in range(1200)]
    assert lrs[:100] == [training.learning_rate(s, cosine) for s in range(100)]  # the same warmup
    assert lrs[100:801] == [1e-3] * 701  # stable: the peak until the last 200 steps begin
    assert all(a > b for a, b in zip(lrs[800:1000], lrs[801:1001]))  # then a straight line down
    assert lrs[900] == pytest.approx(5.5e-4) and lrs[999] == pytest.approx(1e-4 + 9e-4 / 200)
    assert lrs[1000] == lrs[1199] == 1e-4  # min_lr where the cosine reaches it too
    assert training.learning_rate(900, schedule(**settings, schedule="wsd", decay_fraction=0.0)) == 1e-3
    docstring = schedule(max_iters=20, learning_rate=1.0, min_lr=0.1, warmup_iters=0, schedule="wsd")
    assert [training.learning_rate(s, docstring) for s in range(21)] == pytest.approx([1.0] * 17 + [0.775, 0.55,
                                                                                                    0.325, 0.1])


def test_schedule_defaults_scale_with_run_length():
    assert schedule(max_iters=1000).warmup_iters == 50
    assert schedule(max_iters=600_000).warmup_iters == 2000
    assert schedule(learning_rate=6e-4).min_lr == pytest.approx(6e-5)
    extended = schedule(max_iters=100, warmup_iters=10, lr_decay_iters=100)
    assert training.learning_rate(150, extended) == extended.min_lr


def test_steps_in_time_counts_every_evaluation():
    assert training.steps_in_time(60, 0.5, 5, eval_interval=50) == 100  # 50 s of steps, evaluations at 50 and 100
    assert training.steps_in_time(59.9, 0.5, 5, eval_interval=50) == 99  # the evaluation at 100 no longer fits
    assert training.steps_in_time(60, 0.5, 0, eval_interval=50) == 120
    assert training.steps_in_time(1, 5, 5, eval_interval=10) == 1  # never fewer than one step


# --- an end-to-end run


def test_end_to_end_loss_falls_checkpoints_appear_and_best_only_improves(corpus, tmp_path, monkeypatch, capsys):
    writes = []
    real_save = checkpoint.save_checkpoint

    def spy(path, state, format):
        writes.append((str(path).rsplit("/", 1)[-1], state["step"], state["best_val_loss"]))
        real_save(path, state, format)

    monkeypatch.setattr(checkpoint, "save_checkpoint", spy)
    out = tmp_path / "out"
    train(corpus, out, "--max_iters=60", "--eval_interval=20", "--checkpoint_interval=25")
    regular = [step for name, step, _ in writes if name == "model_checkpoint.tar"]
    assert regular == [25, 50, 60]
    best = [(step, loss) for name, step, loss in writes if name == "best_checkpoint.tar"]
    assert [s for s, _ in best][0] == 20 and all(a[1] > b[1] for a, b in zip(best, best[1:]))
    state = checkpoint.load_checkpoint(out / "model_checkpoint.tar")
    assert state["step"] == 60 and state["best_val_loss"] < 2.0  # from ln(vocab) ~ 3 at the start
    log = capsys.readouterr().out
    assert "step 20: train loss" in log and "bits/char" in log
    model, tokenizer = checkpoint.model_from_checkpoint(state)
    assert tokenizer.decode(tokenizer.encode("the cat")) == "the cat"


def test_resume_is_exact(corpus, tmp_path):
    schedule_flags = ["--warmup_iters=5", "--lr_decay_iters=40", "--dropout=0.1", "--eval_interval=10"]
    train(corpus, tmp_path / "straight", "--max_iters=40", *schedule_flags)
    train(corpus, tmp_path / "split", "--max_iters=15", *schedule_flags)
    train(corpus, tmp_path / "split", "--max_iters=40", "--resume")
    a = checkpoint.load_checkpoint(tmp_path / "straight" / "model_checkpoint.tar")
    b = checkpoint.load_checkpoint(tmp_path / "split" / "model_checkpoint.tar")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["best_val_loss"] == b["best_val_loss"]


@pytest.mark.parametrize("optimizer, schedule", [("adamw", "cosine"), ("muon", "wsd")])
def test_a_time_budget_trains_exactly_the_run_of_the_steps_it_measured(corpus, tmp_path, capsys, optimizer, schedule):
    """The timed steps leave no trace; with wsd the step count is re-sized as the run goes, the warmup staying."""
    flags = ["--dropout=0.1", "--eval_interval=10", f"--optimizer={optimizer}", f"--schedule={schedule}"]
    train(corpus, tmp_path / "timed", "--max_minutes=0.03", *flags)  # dropout: the random state is restored too
    summary = capsys.readouterr().out
    assert "time: 0.03 minutes = " in summary and ("re-sized to the pace" in summary) == (schedule == "wsd")
    timed = checkpoint.load_checkpoint(tmp_path / "timed" / "model_checkpoint.tar")
    steps, warmup = timed["train_config"]["max_iters"], timed["train_config"]["warmup_iters"]
    assert timed["step"] == steps and warmup >= 1
    train(corpus, tmp_path / "fixed", f"--max_iters={steps}", f"--warmup_iters={warmup}", *flags)
    fixed = checkpoint.load_checkpoint(tmp_path / "fixed" / "model_checkpoint.tar")
    for name, tensor in fixed["model"].items():
        assert torch.equal(tensor, timed["model"][name]), name


def test_replanning_moves_the_end_of_a_wsd_run_never_the_steps_taken():
    cfg = schedule(max_iters=100, warmup_iters=5, schedule="wsd", decay_fraction=0.4, eval_interval=50)
    assert training.decay_begins(cfg) == 60
    faster = training.replan(cfg, 30, seconds_left=20, per_step=0.1, per_eval=1)  # 160 steps + evaluations at
    assert faster.max_iters == 190 and faster.warmup_iters == 5                 # 50, 100, 150 and 190: 20 s
    late = training.replan(cfg, 50, seconds_left=0.5, per_step=0.1, per_eval=1)  # time is up: the decay starts now
    assert late.max_iters == 83 and training.decay_begins(late) == 50
    for new, step in ((faster, 30), (late, 50)):
        assert [training.learning_rate(s, new) for s in range(step)] == [training.learning_rate(s, cfg)
                                                                          for s in range(step)]


def test_the_command_line_chooses_between_steps_and_a_config_files_time(corpus, tmp_path, capsys):
    timed = tmp_path / "timed.yaml"
    timed.write_text("max_minutes: 60\n")
    flags = [corpus, "--config", str(timed), *TINY[2:]]  # TINY without its own --config
    playground.main([*flags, f"--out_dir={tmp_path / 'out'}", "--max_iters=3"])
    assert "time:" not in capsys.readouterr().out
    assert checkpoint.load_checkpoint(tmp_path / "out" / "model_checkpoint.tar")["step"] == 3
    steps = tmp_path / "steps.yaml"
    steps.write_text("max_iters: 100000\n")
    playground.main([corpus, "--config", str(steps), *TINY[2:], f"--out_dir={tmp_path / 'b'}", "--max_minutes=0.01"])
    assert "time: 0.01 minutes = " in capsys.readouterr().out
    assert "not both" in cli_error(capsys, [corpus, "--max_iters=3", "--max_minutes=1", "--out_dir=/nonexistent/o"])


def test_a_crash_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "model_checkpoint.tar"
    checkpoint.save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    state = checkpoint.load_checkpoint(path, required=("step", "model"))
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model_checkpoint.tar"]  # no temporary file left behind


# --- bad input: one line, non-zero exit, nothing overwritten


def test_bad_corpora(capsys, tmp_path):
    assert "not found" in cli_error(capsys, [str(tmp_path / "missing.txt")])
    assert "not found" in cli_error(capsys, [str(tmp_path / "missing.txt"), "--tokenizer=bbpe:300"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty" in cli_error(capsys, [str(empty)])
    short = tmp_path / "short.txt"
    short.write_text("hello world, too short\n")
    assert "fewer than block_size + 1" in cli_error(capsys, [str(short), *TINY])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    assert "not UTF-8" in cli_error(capsys, [str(latin1)]) and "offset 3" in cli_error(capsys, [str(latin1)])


def test_bad_tokenizer_and_shapes(capsys, corpus, tmp_path):
    assert "neither char" in cli_error(capsys, [corpus, "--tokenizer=missing.json"])
    corrupt = tmp_path / "tok.json"
    corrupt.write_text("{not json")
    assert str(corrupt) in cli_error(capsys, [corpus, f"--tokenizer={corrupt}"])
    assert "does not match the tokenizer" in cli_error(capsys, [corpus, *TINY, "--vocab_size=7"])
    assert "not divisible by num_of_heads" in cli_error(capsys, [corpus, "--embedding_dim=100", "--num_of_heads=3"])
    assert "unknown flag --num_layers" in cli_error(capsys, [corpus, "--num_layers=3"])


def test_bad_resume_never_overwrites(capsys, corpus, tmp_path):
    out = tmp_path / "out"
    assert "no checkpoint at" in cli_error(capsys, [corpus, f"--out_dir={out}", "--resume"])
    out.mkdir()
    garbage = out / "model_checkpoint.tar"
    garbage.write_bytes(b"this is not a checkpoint")
    assert "not a readable checkpoint" in cli_error(capsys, [corpus, f"--out_dir={out}", "--resume"])
    assert garbage.read_bytes() == b"this is not a checkpoint"
    torch.save({"format": "something-else"}, garbage)
    assert "not a scratchgpt-lm checkpoint" in cli_error(capsys, [corpus, f"--out_dir={out}", "--resume"])
    train(corpus, out, "--max_iters=5", "--eval_interval=5", "--overwrite")  # over the foreign file
    before = garbage.read_bytes()
    assert "differs from the checkpoint" in cli_error(capsys, [corpus, f"--out_dir={out}", "--resume",
                                                               "--embedding_dim=64"])
    assert "already max_iters=5" in cli_error(capsys, [corpus, f"--out_dir={out}", "--resume"])
    assert garbage.read_bytes() == before


def test_nan_loss_stops_with_advice_and_keeps_the_checkpoint(capsys, corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    train(corpus, out, "--max_iters=5", "--eval_interval=5", "--lr_decay_iters=10")
    before = (out / "model_checkpoint.tar").read_bytes()
    real_forward = playground.GPT.forward

    def poisoned(self, idx, targets=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, **kwargs)
        return logits, (loss * float("nan") if self.training and loss is not None else loss)

    monkeypatch.setattr(playground.GPT, "forward", poisoned)
    err = cli_error(capsys, [corpus, f"--out_dir={out}", "--resume", "--max_iters=10"])
    assert "loss became nan at step 5" in err and "--learning_rate" in err
    assert (out / "model_checkpoint.tar").read_bytes() == before


def test_wandb_logs_offline_when_asked(corpus, tmp_path):
    out = tmp_path / "out"
    train(corpus, out, "--max_iters=10", "--eval_interval=5", "--wandb")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_wandb_is_not_imported_unless_asked(corpus, tmp_path):
    code = ("import sys, playground; playground.main(sys.argv[1:]); "
            "assert 'wandb' not in sys.modules, 'wandb was imported'")
    result = subprocess.run([sys.executable, "-c", code, corpus, f"--out_dir={tmp_path / 'o'}", *TINY,
                             "--max_iters=3", "--eval_interval=3"], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-1000:]


def test_a_trained_tokenizer_is_cached_per_corpus_and_spec(corpus, tmp_path, capsys):
    first = data.resolve_tokenizer("bpe:40", corpus)
    assert "training a bpe tokenizer" in capsys.readouterr().out
    second = data.resolve_tokenizer("bpe:40", corpus)
    assert "training" not in capsys.readouterr().out and second.to_json() == first.to_json()
