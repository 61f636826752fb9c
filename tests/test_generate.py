"""Generation: the KV cache against the reference loop, the sampler's guarantees, and generate.py's command line."""
import subprocess
import sys

import pytest
import torch

import generate
import sampling
from attention import causal_mask
from checkpoint import LanguageModelCheckpoint
from config import ModelConfig, run_main
from gpt import GPT
from tokenizer import CharTokenizer, TokenizerError, train_tokenizer

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
BLOCK = 16


def tiny_model(vocab_size=40, block_size=BLOCK, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, block_size=block_size, embedding_dim=32, num_of_layers=2,
                         num_of_heads=4)
    return GPT(config).eval()


def prompt(length, batch=1, vocab_size=40, seed=1):
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- the KV cache against the reference loop


@pytest.mark.parametrize("prompt_len, batch", [(1, 1), (5, 2), (BLOCK, 1), (BLOCK + 7, 1)])
def test_greedy_with_and_without_cache_is_identical_past_block_size(prompt_len, batch):
    model = tiny_model()
    idx = prompt(prompt_len, batch)
    new = 3 * BLOCK + 5  # the window fills and restarts several times
    fast = model.generate(idx, new, greedy=True)
    reference = model.generate(idx, new, greedy=True, kv_cache=False)
    assert fast.shape == (batch, prompt_len + new)
    assert torch.equal(fast, reference)
    assert torch.equal(fast[:, :prompt_len], idx)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", ["manual", "sdpa", "flash"])
def test_decode_step_agrees_with_the_models_forward(bias, backend):
    """The one-token step (attention's cheap path) against a full forward pass without cache, position after
    position, and against the general cached path (three new positions at once)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=BLOCK, embedding_dim=32, num_of_layers=2, num_of_heads=4,
                            bias=bias, attention_backend=backend)).eval()
    ids = prompt(BLOCK, batch=2)
    fast, slow = model.new_kv_caches(2), model.new_kv_caches(2)
    with torch.no_grad():
        model.hidden_states(ids[:, :3], kv_caches=fast)
        for t in range(3, BLOCK):
            got = model.lm_head(model.hidden_states(ids[:, t:t + 1], kv_caches=fast)[:, -1])  # (B, V)
            full = model(ids[:, :t + 1])[0][:, -1]  # (B, V), no cache at all
            assert torch.allclose(got, full, atol=1e-5)
        for t in range(0, BLOCK, 3):  # several new positions at once: the general path with its offset mask
            got = model.hidden_states(ids[:, t:t + 3], kv_caches=slow)  # (B, new, C)
            assert torch.allclose(got, model.hidden_states(ids[:, :t + 3])[:, t:], atol=1e-5)
    assert fast[0].length == slow[0].length == BLOCK


def test_a_mask_cached_while_generating_serves_autograd_later():
    """attention.causal_mask is cached; the one a prefill makes under inference_mode must be an ordinary tensor."""
    tiny_model().generate(prompt(6), 2, greedy=True)  # the 6-token prefill makes causal_mask(6, 6)
    scores = torch.randn(6, 6, requires_grad=True)
    scores[causal_mask(6, 6, scores.device)].sum().backward()  # indexing saves the mask for the backward
    assert scores.grad.sum() == 21


def test_cache_and_reference_see_the_same_probabilities_at_every_step():
    model = tiny_model()
    idx = prompt(4)
    fast = model.generate(idx, 2 * BLOCK, greedy=True, return_probs=True, top_alternatives=5)
    reference = model.generate(idx, 2 * BLOCK, greedy=True, kv_cache=False, return_probs=True, top_alternatives=5)
    assert torch.allclose(fast.probs, reference.probs, atol=1e-5)
    assert torch.allclose(fast.top_probs, reference.top_probs, atol=1e-5)


def test_context_policy_keeps_the_last_half_when_the_window_is_full():
    """The probabilities at a step equal one plain forward pass over exactly the window the policy describes."""
    model = tiny_model()
    idx = prompt(3)
    out = model.generate(idx, 2 * BLOCK, greedy=True, return_probs=True)
    ids = out.ids[0]
    start = 0
    for length in range(3, 3 + 2 * BLOCK):
        if length - start > BLOCK:
            start = length - BLOCK // 2
        logits, _ = model(ids[None, start:length])
        expected = torch.softmax(logits[0, -1], dim=-1)[ids[length]]
        assert out.probs[0, length - 3].item() == pytest.approx(expected.item(), abs=1e-5)


def test_probs_are_the_models_own_and_the_alternatives_are_sorted():
    model = tiny_model()
    out = model.generate(prompt(5), 6, temperature=0.7, top_k=4, return_probs=True, top_alternatives=40,
                         generator=torch.Generator().manual_seed(0))
    assert out.ids.shape == (1, 11) and out.probs.shape == (1, 6) and out.top_ids.shape == (1, 6, 40)
    assert torch.allclose(out.top_probs.sum(-1), torch.ones(1, 6), atol=1e-5)  # all V tokens: the full softmax
    assert (out.top_probs[..., :-1] >= out.top_probs[..., 1:]).all()
    chosen = (out.top_ids == out.ids[0, 5:, None]).float().argmax(-1)  # (1, 6), rank of the chosen token
    assert torch.allclose(out.top_probs.gather(-1, chosen[..., None])[..., 0], out.probs)


def test_generates_under_bfloat16_autocast():
    model = tiny_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model.generate(prompt(3), 2 * BLOCK, greedy=True, return_probs=True)
        reference = model.generate(prompt(3), 2 * BLOCK, greedy=True, kv_cache=False, return_probs=True)
    assert fast.ids.shape == reference.ids.shape == (1, 3 + 2 * BLOCK)
    assert torch.allclose(fast.probs[:, :4], reference.probs[:, :4], atol=0.02)  # bfloat16: close, not equal


# --- the sampler


def test_same_generator_seed_gives_the_same_tokens_with_and_without_cache():
    model = tiny_model()
    runs = [model.generate(prompt(4), 40, temperature=1.0, top_p=0.9, kv_cache=cache,
                           generator=torch.Generator().manual_seed(7)) for cache in (True, True, False)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other = model.generate(prompt(4), 40, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


def test_top_k_never_leaves_the_k_most_probable():
    model = tiny_model()
    out = model.generate(prompt(4, batch=3), 60, temperature=2.0, top_k=3, return_probs=True, top_alternatives=3,
                         generator=torch.Generator().manual_seed(0))
    assert (out.top_ids == out.ids[:, 4:, None]).any(-1).all()


def test_top_p_never_leaves_the_nucleus():
    model = tiny_model()
    top_p = 0.3
    out = model.generate(prompt(4, batch=3), 60, temperature=1.0, top_p=top_p, return_probs=True,
                         top_alternatives=40, generator=torch.Generator().manual_seed(0))
    rank = (out.top_ids == out.ids[:, 4:, None]).float().argmax(-1)  # (B, N) rank of each chosen token
    before = out.top_probs.cumsum(-1) - out.top_probs  # probability of the tokens ranked above
    assert (before.gather(-1, rank[..., None]) < top_p + 1e-6).all()
    assert (rank > 0).any()  # the test means something: not greedy in disguise


def test_filter_logits_known_answers():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(sampling.filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(sampling.filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(sampling.filter_logits(logits, top_p=1.0)).all()
    assert torch.isfinite(sampling.filter_logits(logits, top_p=0.01)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(sampling.filter_logits(logits, top_k=3)).tolist() == [[True, True, True, False]]
    shuffled = logits[:, [2, 0, 3, 1]]  # the order of the vocabulary does not matter
    assert torch.isfinite(sampling.filter_logits(shuffled, top_p=0.8)).tolist() == [[False, True, False, True]]
    probs = sampling.sampling_probs(logits, top_k=2)
    assert torch.allclose(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))


def test_temperature_towards_zero_is_greedy():
    model = tiny_model()
    greedy = model.generate(prompt(4, batch=2), 40, greedy=True)
    assert torch.equal(model.generate(prompt(4, batch=2), 40, temperature=0), greedy)
    cold = model.generate(prompt(4, batch=2), 40, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)


@pytest.mark.parametrize("settings", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5),
                                      dict(max_new_tokens=0)])
def test_api_rejects_bad_settings(settings):
    with pytest.raises(ValueError):
        tiny_model().generate(prompt(2), **{"max_new_tokens": 3, **settings})


def test_generation_leaves_no_trace():
    model = tiny_model().train()
    steps = sampling.stream(model, prompt(3), 10, greedy=True)
    next(steps)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()  # nothing leaks across the yield
    assert not model.training
    steps.close()
    assert model.training  # its mode is given back
    out = model.generate(prompt(3), 5, greedy=True)
    out += 1  # ordinary tensors come back, not inference tensors
    assert model.training


# --- generate.py


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """generate.main sets torch's thread count (--threads); give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def out_dir(tmp_path):
    """A checkpoint of a random tiny model with a char tokenizer, saved as playground.py would."""
    tokenizer = CharTokenizer.train(TEXT)
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    LanguageModelCheckpoint.of(model, tokenizer, step=0).save(tmp_path / "best_checkpoint.tar")
    return tmp_path


def cli(capsys, out_dir, *flags) -> str:
    generate.main([f"--out_dir={out_dir}", "--device=cpu", "--max_new_tokens=30", *flags])
    return capsys.readouterr().out


def cli_error(capsys, *argv) -> str:
    """The command line must exit 1 with exactly one line on stderr. Returns that line."""
    with pytest.raises(SystemExit) as info:
        run_main(lambda: generate.main(list(argv)), user_errors=(TokenizerError,))
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_cli_samples_from_the_best_checkpoint_reproducibly(capsys, out_dir):
    first = cli(capsys, out_dir, "--prompt=ROMEO:", "--seed=3")
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 30 + 1
    assert cli(capsys, out_dir, "--prompt=ROMEO:", "--seed=3") == first
    assert cli(capsys, out_dir, "--prompt=ROMEO:", "--seed=3", "--stream") == first
    assert cli(capsys, out_dir, "--prompt=ROMEO:", "--seed=4") != first


def test_cli_greedy_with_and_without_cache_and_a_prompt_file(capsys, out_dir, tmp_path):
    (tmp_path / "prompt.txt").write_text("But soft", encoding="utf-8")
    with_cache = cli(capsys, out_dir, f"--prompt=FILE:{tmp_path / 'prompt.txt'}", "--greedy")
    assert with_cache.startswith("But soft")
    assert cli(capsys, out_dir, "--prompt=But soft", "--greedy", "--no_kv_cache") == with_cache


def test_cli_several_samples_are_separated(capsys, out_dir):
    out = cli(capsys, out_dir, "--prompt=It", "--num_samples=3")
    assert [line for line in out.splitlines() if line.startswith("--- sample")] == \
        ["--- sample 1/3 ---", "--- sample 2/3 ---", "--- sample 3/3 ---"]


def test_cli_show_probs_and_alternatives_table(capsys, out_dir):
    out = cli(capsys, out_dir, "--prompt=It is", "--greedy", "--show_probs", "--top_alternatives=6",
              "--max_new_tokens=8")
    text, table = out.split("\n step", 1)
    assert text.startswith("It is") and text.count(" (0.") + text.count(" (1.") == 8
    rows = table.strip().splitlines()
    assert len(rows) == 1 + 8 and rows[1].split()[0] == "1" and rows[-1].split()[0] == "8"
    first = rows[1].split("|")[1].split()
    assert len(first) == 12  # 6 x (token, probability)
    probs = [float(p) for p in first[1::2]]
    assert probs == sorted(probs, reverse=True)
    assert rows[1].split("|")[0].split()[1:] == first[:2]  # greedy: the chosen token is the most probable


def test_cli_empty_prompt_starts_from_a_newline_with_char(capsys, out_dir):
    generate.main([f"--out_dir={out_dir}", "--device=cpu", "--max_new_tokens=30", "--prompt="])
    captured = capsys.readouterr()
    assert len(captured.out) == 31  # 30 new characters and a final newline; the stand-in start is not printed
    assert "empty prompt: starting from a newline" in captured.err


def test_cli_with_a_byte_level_tokenizer_starts_from_end_of_text_and_streams_whole_characters(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3 + "née ☃\n", encoding="utf-8")
    tokenizer = train_tokenizer("bbpe", str(corpus), vocab_size=300, progress=False)
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    LanguageModelCheckpoint.of(model, tokenizer).save(tmp_path / "best_checkpoint.tar")
    generate.main([f"--out_dir={tmp_path}", "--prompt=", "--max_new_tokens=12"])
    assert "starting from the end-of-text token" in capsys.readouterr().err
    batch = cli(capsys, tmp_path, "--prompt=née ☃", "--temperature=1.5")
    assert batch.startswith("née ☃")
    assert cli(capsys, tmp_path, "--prompt=née ☃", "--temperature=1.5", "--stream") == batch


def test_probabilities_and_table_cells_show_every_token():
    assert generate.with_prob(" dog", 0.53471) == " dog (0.5347)"
    assert generate.with_prob("\n", 0.5) == "↵ (0.5000)\n"
    assert generate.with_prob(" ", 0.25) == "␣ (0.2500)"  # a lone space would vanish between two probabilities
    assert generate.visible(" the\n") == "␣the\\n"
    assert generate.visible("x" * 20) == "x" * 11 + "…"


def test_text_stream_waits_for_whole_utf8_characters(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("plain ascii text " * 20, encoding="utf-8")
    tokenizer = train_tokenizer("bbpe", str(corpus), vocab_size=260, progress=False)
    text = "née ☃ ok"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)  # é and ☃ are split into bytes
    stream = generate.TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("flags, message", [
    (["--max_new_tokens=0"], "max_new_tokens=0 must be at least 1"),
    (["--temperature=0"], "temperature=0.0 must be positive when sampling; use --greedy"),
    (["--temperature=-1"], "temperature=-1.0 must be positive"),
    (["--top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (["--top_p=1.5"], "top_p=1.5 must be in (0, 1]"),
    (["--top_k=0"], "top_k=0 must be at least 1"),
    (["--prompt=Romeo & Juliet"], "prompt cannot be encoded: text has characters the tokenizer has never seen: "
                                  "'m', '&'"),
    (["--prompt=FILE:/nonexistent/prompt.txt"], "prompt file not found: /nonexistent/prompt.txt"),
    (["--no_such_flag=1"], "unknown flag --no_such_flag"),
])
def test_cli_bad_input_is_one_clear_line(capsys, out_dir, flags, message):
    assert message in cli_error(capsys, f"--out_dir={out_dir}", "--device=cpu", *flags)


def test_cli_missing_and_corrupt_checkpoints(capsys, tmp_path):
    assert "no checkpoint in" in cli_error(capsys, f"--out_dir={tmp_path}")
    assert "no checkpoint at" in cli_error(capsys, f"--checkpoint={tmp_path / 'nope.tar'}")
    (tmp_path / "bad.tar").write_bytes(b"not a checkpoint at all")
    assert "not a readable checkpoint" in cli_error(capsys, f"--checkpoint={tmp_path / 'bad.tar'}")


def test_cli_error_from_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "generate.py", f"--checkpoint={tmp_path / 'nope.tar'}"],
                            capture_output=True, text=True, cwd=generate.__file__.rsplit("/", 1)[0])
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_help_lists_every_setting():
    from config import build_parser
    text = build_parser((generate.GenerateConfig,), "x").format_help()
    for flag in ("--prompt", "--num_samples", "--max_new_tokens", "--temperature", "--top_k", "--top_p", "--greedy",
                 "--seed", "--stream", "--device", "--show_probs", "--top_alternatives", "--no_kv_cache",
                 "--checkpoint", "--out_dir", "--threads"):
        assert flag in text
