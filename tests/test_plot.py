"""plot.py: every picture renders to a real, non-blank PNG of its size, headless; the attention weights drawn are the
formula's; a resumed run's curves keep every earlier point; bad inputs are one clear line."""
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import generate
import playground
import pictures
import plot
from config import ModelConfig, UserError, run_main
from gpt import GPT
from tokenizer import CharTokenizer, TokenizerError
from tiny import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"


def assert_png(path, fig):
    """A PNG file of the figure's size in pixels whose pixels are not all alike."""
    import matplotlib.image

    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
    assert (width, height) == tuple(round(x * fig.dpi) for x in fig.get_size_inches())
    assert width >= 200 and height >= 150
    pixels = matplotlib.image.imread(path)  # (height, width, 4) floats in [0, 1]
    assert pixels.shape[:2] == (height, width) and pixels[..., :3].std() > 0.02  # not blank


def tiny_model(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab_size, block_size=16, embedding_dim=32, num_of_layers=2,
                           num_of_heads=4)).eval()


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint of a random tiny char model (2 layers, 4 heads, context 16), saved as playground.py would."""
    tokenizer = CharTokenizer.train(TEXT)
    model = tiny_model(tokenizer.vocab_size)
    path = tmp_path / "best_checkpoint.tar"
    checkpoint.LanguageModelCheckpoint.of(model, tokenizer, step=0).save(path)
    return path


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch, tmp_path):
    threads = torch.get_num_threads()
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    yield
    torch.set_num_threads(threads)


def record(monkeypatch, *names) -> list:
    """Wrap pictures.py's drawing functions so that the test sees each Figure they return (and save)."""
    figures = []
    for name in names:
        draw = getattr(pictures, name)
        monkeypatch.setattr(pictures, name, lambda *a, _draw=draw, **k: figures.append(_draw(*a, **k)) or figures[-1])
    return figures


def cli_error(capsys, main, *argv) -> str:
    """The command line must exit 1 with exactly one line on stderr. Returns that line."""
    with pytest.raises(SystemExit) as info:
        run_main(lambda: main(list(argv)), user_errors=(TokenizerError,))
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --- attention weights: the formula, and the ones the forward uses


def test_attention_weights_equal_the_formula_and_the_forward():
    model = tiny_model(vocab_size=20)
    idx = torch.randint(0, 20, (2, 11), generator=torch.Generator().manual_seed(0))  # (B, T)
    logits_before = model(idx)[0]
    maps = model.attention_maps(idx)  # (N, B, H, T, T)
    assert maps.shape == (2, 2, 4, 11, 11)
    assert torch.equal(model(idx)[0], logits_before)  # the forward is untouched
    B, T, H, D = 2, 11, 4, 8
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)  # (T, T), True above the diagonal
    mask = torch.zeros(T, T).masked_fill(future, float("-inf"))  # (T, T)
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(T))  # (B, T, C)
    with torch.no_grad():
        for block, weights in zip(model.blocks, maps):
            h = block.ln_1(x)  # (B, T, C)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in block.attn.qkv(h).split(32, dim=2))  # (B, H, T, D)
            expected = torch.softmax(q @ k.transpose(-2, -1) / D ** 0.5 + mask, dim=-1)  # (B, H, T, T)
            torch.testing.assert_close(weights, expected)
            torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T))  # each row sums to 1
            assert (weights[..., future] == 0).all()  # and never looks ahead
            merged = (weights @ v).transpose(1, 2).reshape(B, T, 32)  # (B, T, C)
            torch.testing.assert_close(block.attn.proj(merged), block.attn(h))  # what the forward averages with
            x = block(x)


def test_attention_weights_function_with_a_padding_mask():
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4)  # (B, H, L, E), (B, H, S, E)
    keep = torch.tensor([True, True, False, True, False, True])  # (S,)
    from attention import attention_weights

    weights = attention_weights(q, k, attn_mask=keep)  # (B, H, L, S)
    expected = torch.softmax((q @ k.transpose(-2, -1) / 2).masked_fill(~keep, float("-inf")), dim=-1)
    torch.testing.assert_close(weights, expected)
    assert (weights[..., ~keep] == 0).all()
    none = attention_weights(q, k, attn_mask=torch.zeros(6, dtype=torch.bool))
    assert torch.equal(none, torch.zeros_like(none))  # nothing to attend to: zeros, never NaN


# --- the pictures, each from the command line that draws it


def test_attention_map_grid_and_one_large_map(capsys, monkeypatch, ckpt, tmp_path):
    grid, one = tmp_path / "maps" / "grid.png", tmp_path / "one.png"
    figures = record(monkeypatch, "attention_maps")
    generate.main([f"--checkpoint={ckpt}", "--prompt=But soft, what", f"--attention_map={grid}"])
    generate.main([f"--checkpoint={ckpt}", "--prompt=But soft, what", f"--attention_map={one}", "--layer=1",
                   "--head=3"])
    captured = capsys.readouterr()
    assert captured.out == "" and f"wrote {grid}" in captured.err  # a map, not a sample
    assert_png(grid, figures[0])
    assert_png(one, figures[1])
    assert len(figures[0].axes) == 2 * 4 + 1 and len(figures[1].axes) == 1 + 1  # the maps and a colour bar
    assert figures[1].axes[0].get_title() == "layer 1, head 3"
    labels = [t.get_text() for t in figures[0].axes[0].get_xticklabels()]
    assert labels[:6] == ["B", "u", "t", "␣", "s", "o"]  # the prompt's tokens, spaces visible
    image = figures[1].axes[0].get_images()[0].get_array()  # (T, T), as drawn
    state = checkpoint.load_checkpoint(ckpt)
    model, tokenizer = checkpoint.model_from_checkpoint(state)
    expected = model.attention_maps(torch.tensor([tokenizer.encode("But soft, what")]))[1, 0, 3]  # (T, T)
    torch.testing.assert_close(torch.tensor(image.data), expected)


def test_probability_text_and_alternatives_chart(capsys, monkeypatch, ckpt, tmp_path):
    figures = record(monkeypatch, "probability_text", "alternatives_chart")
    generate.main([f"--checkpoint={ckpt}", "--prompt=It is", "--show_probs", "--max_new_tokens=40",
                   f"--plot={tmp_path / 'probs.png'}"])
    generate.main([f"--checkpoint={ckpt}", "--prompt=It is", "--top_alternatives=4", "--max_new_tokens=7",
                   f"--plot={tmp_path / 'alternatives.png'}"])
    assert "wrote" in capsys.readouterr().err
    assert_png(tmp_path / "probs.png", figures[0])
    assert_png(tmp_path / "alternatives.png", figures[1])
    texts = [t.get_text() for t in figures[0].axes[0].texts]
    assert texts[:5] == ["I", "t", "␣", "i", "s"] and len(texts) == 5 + 40  # the prompt, then every new token
    bar_charts = [ax for ax in figures[1].axes if ax.patches]
    assert len(bar_charts) == 7 and all(len(ax.patches) == 4 for ax in bar_charts)  # 7 steps x 4 alternatives


def test_embeddings_picture(capsys, monkeypatch, ckpt, tmp_path):
    figures = record(monkeypatch, "embeddings")
    plot.main(["--embeddings", str(ckpt), str(tmp_path / "emb.png")])
    assert f"wrote {tmp_path / 'emb.png'}" in capsys.readouterr().out
    assert_png(tmp_path / "emb.png", figures[0])
    ax = figures[0].axes[0]
    vocab = CharTokenizer.train(TEXT).vocab_size
    assert sum(len(c.get_offsets()) for c in ax.collections) == vocab  # every token is a point
    assert "↵" in [t.get_text() for t in ax.texts]  # and has a readable label


def test_embedding_kinds_and_token_labels():
    assert [pictures.embedding_kind(t) for t in "aZ7?\n b"] == ["vowel", "capital", "digit", "punctuation", "space",
                                                            "space", "consonant"]
    assert pictures.embedding_kind(" the") == "word"
    assert pictures.token_label(" the\n") == "␣the↵" and pictures.token_label("\x00") == "\\x00"


# --- training curves


def small_corpus(tmp_path):
    lines = [f"the {animal} {verb} the fish." for animal in ("cat", "dog", "king") for verb in ("sees", "eats")] * 120
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_resumed_run_draws_every_earlier_point(tmp_path, monkeypatch):
    corpus, out = small_corpus(tmp_path), tmp_path / "run"
    figures = record(monkeypatch, "training_curves")
    playground.main([corpus, f"--out_dir={out}", *TINY, "--max_iters=10", "--eval_interval=5",
                     "--lr_decay_iters=20"])
    first = checkpoint.load_checkpoint(out / "model_checkpoint.tar")["history"]
    assert [r["step"] for r in first] == [5, 10] and first[0]["tokens"] == 5 * 8 * 16
    playground.main([corpus, f"--out_dir={out}", *TINY, "--max_iters=20", "--resume"])
    history = checkpoint.load_checkpoint(out / "model_checkpoint.tar")["history"]
    assert [r["step"] for r in history] == [5, 10, 15, 20] and history[:2] == first
    assert set(history[0]) == {"step", "tokens", "train", "val", "bpc", "lr"}
    assert_png(out / "curves.png", figures[-1])
    lines = {line.get_label(): line for line in figures[-1].axes[0].get_lines()}
    assert list(lines["val"].get_xdata()) == [5, 10, 15, 20]  # the picture the resumed run drew has them all
    assert list(lines["val"].get_ydata()) == [r["val"] for r in history]
    assert list(lines["train"].get_ydata()) == [r["train"] for r in history]
    lr_line = figures[-1].axes[1].get_lines()[0]
    assert len(lr_line.get_xdata()) == 20 and lr_line.get_ydata()[9] == pytest.approx(history[1]["lr"])

    # A checkpoint from before the history existed resumes with an empty earlier history.
    state = checkpoint.load_checkpoint(out / "model_checkpoint.tar")
    del state["history"], state["format"], state["version"]
    checkpoint.save_checkpoint(out / "model_checkpoint.tar", state)
    playground.main([corpus, f"--out_dir={out}", *TINY, "--max_iters=25", "--eval_interval=5", "--resume"])
    assert [r["step"] for r in checkpoint.load_checkpoint(out / "model_checkpoint.tar")["history"]] == [25]


def test_drawing_curves_changes_nothing_in_training(tmp_path, monkeypatch):
    corpus = small_corpus(tmp_path)
    playground.main([corpus, f"--out_dir={tmp_path / 'drawn'}", *TINY, "--max_iters=6", "--eval_interval=2",
                     "--dropout=0.1"])
    monkeypatch.setattr(pictures, "training_curves", lambda *a, **k: None)
    playground.main([corpus, f"--out_dir={tmp_path / 'plain'}", *TINY, "--max_iters=6", "--eval_interval=2",
                     "--dropout=0.1"])
    drawn, plain = (checkpoint.load_checkpoint(tmp_path / d / "model_checkpoint.tar") for d in ("drawn", "plain"))
    assert (tmp_path / "drawn" / "curves.png").exists() and not (tmp_path / "plain" / "curves.png").exists()
    assert drawn["history"] == plain["history"]
    for name, tensor in drawn["model"].items():
        assert torch.equal(tensor, plain["model"][name]), name


def write_run(path, history, **settings):
    """A run's checkpoint as plot.py reads it: the settings and the history (no weights, no tokenizer: not read)."""
    checkpoint.LanguageModelCheckpoint(
        model={}, tokenizer="",
        model_config={"embedding_dim": 32, **{k: v for k, v in settings.items() if k == "embedding_dim"}},
        train_config={"learning_rate": 1e-3, "out_dir": str(path), **{k: v for k, v in settings.items()
                                                                      if k != "embedding_dim"}},
        history=history).save(path / "model_checkpoint.tar")


def fake_history(scale=1.0, factor=1.44):
    return [{"step": s, "tokens": s * 512, "train": scale * 3 / s ** 0.3, "val": scale * 3.2 / s ** 0.3,
             "bpc": factor * scale * 3.2 / s ** 0.3, "lr": 1e-3} for s in (100, 200, 300, 400)]


def test_overlay_of_several_runs_labels_them_by_what_differs(capsys, tmp_path, monkeypatch):
    for name, settings in (("a", {}), ("b", {"learning_rate": 4e-3}), ("c", {"learning_rate": 4e-3,
                                                                             "embedding_dim": 64})):
        write_run(tmp_path / name, fake_history(scale=1 + len(settings) / 10), **settings)
    figures = record(monkeypatch, "training_curves")
    target = tmp_path / "runs.png"
    plot.main([str(tmp_path / n) for n in "abc"] + [f"--out={target}"])
    assert f"wrote {target}" in capsys.readouterr().out
    assert_png(target, figures[0])
    labels = [line.get_label() for line in figures[0].axes[0].get_lines()]
    assert labels[:2] == ["embedding_dim=32, learning_rate=0.001: train", "embedding_dim=32, learning_rate=0.001: val"]
    assert labels[-1] == "embedding_dim=64, learning_rate=0.004: val"
    assert pictures.run_labels({"x/a": {"seed": 1, "out_dir": "a"}, "x/b": {"seed": 1, "out_dir": "b"}}) == \
        {"x/a": "a", "x/b": "b"}


def test_runs_with_different_tokenizers_are_compared_in_bits_per_character(tmp_path):
    fig = pictures.training_curves({"char": fake_history(factor=1.44), "bbpe": fake_history(scale=2, factor=0.6)},
                               tmp_path / "bpc.png")
    assert_png(tmp_path / "bpc.png", fig)
    assert fig.axes[0].get_ylabel() == "val bits per character"
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == [r["bpc"] for r in fake_history(scale=2, factor=0.6)]


# --- bad inputs: one line, exit 1


@pytest.mark.parametrize("flags, message", [
    (["--attention_map=MAP", "--layer=2"], "--layer=2 is out of range: this model has 2 layers, 0 to 1"),
    (["--attention_map=MAP", "--head=4"], "--head=4 is out of range: this model has 4 heads, 0 to 3"),
    (["--attention_map=MAP", "--layer=-1"], "--layer=-1 must not be negative"),
    (["--layer=0"], "--layer=0 only chooses what --attention_map draws"),
    (["--attention_map=MAP", "--prompt=" + "It is the east. " * 2], "prompt is 32 tokens, longer than the model's "
                                                                     "context of 16"),
    (["--attention_map=MAP", "--prompt="], "--attention_map draws the prompt's attention: give one with --prompt"),
    (["--attention_map=FILE/attn.png"], "the picture's folder FILE is a file, not a folder"),
    (["--plot=FILE/sub/probs.png", "--show_probs"], "FILE/sub cannot be made: its parent FILE is a file"),
    (["--plot=DIR", "--show_probs"], "is a folder; give a file name"),
    (["--plot=p.png"], "--plot draws the probabilities: add --show_probs or --top_alternatives N"),
    (["--plot=p.png", "--show_probs", "--num_samples=2"], "--plot draws one sample; drop --num_samples=2"),
])
def test_generate_bad_pictures_are_one_clear_line(capsys, ckpt, tmp_path, flags, message):
    (tmp_path / "FILE").write_text("a regular file")
    (tmp_path / "DIR").mkdir()
    flags = [f.replace("MAP", str(tmp_path / "m.png")).replace("FILE", str(tmp_path / "FILE"))
             .replace("DIR", str(tmp_path / "DIR")) for f in flags]
    message = message.replace("FILE", str(tmp_path / "FILE"))
    assert message in cli_error(capsys, generate.main, f"--checkpoint={ckpt}", "--prompt=It is", *flags)
    assert not (tmp_path / "m.png").exists()


def test_plot_bad_inputs_are_one_clear_line(capsys, ckpt, tmp_path):
    (tmp_path / "FILE").write_text("a regular file")
    assert "is a file, not a folder" in cli_error(capsys, plot.main, "--embeddings", str(ckpt),
                                                     str(tmp_path / "FILE" / "emb.png"))
    assert "no checkpoint at" in cli_error(capsys, plot.main, "--embeddings", str(tmp_path / "no.tar"),
                                           str(tmp_path / "e.png"))
    assert "name one or more training runs" in cli_error(capsys, plot.main)
    assert "has no evaluation history" in cli_error(capsys, plot.main, str(ckpt))
    assert "unrecognized arguments" in cli_error(capsys, plot.main, str(tmp_path), "--nope")
    with pytest.raises(UserError, match="cannot write"):
        pictures.training_curves({"a": fake_history()}, tmp_path / "curves.nosuchformat")


def test_headless_and_no_matplotlib_until_something_is_drawn(tmp_path):
    """In a fresh process without a display: importing the scripts loads no matplotlib; drawing never loads pyplot."""
    code = ("import sys, torch, playground, generate, pictures, plot\n"
            "assert 'matplotlib' not in sys.modules\n"
            "pictures.attention_maps(torch.rand(1, 1, 3, 3), ['a', ' ', 'b'], sys.argv[1])\n"
            "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.png")], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_plot_error_from_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "plot.py", "--embeddings", str(tmp_path / "nope.tar"), "x.png"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
