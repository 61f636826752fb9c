"""GPT-2 in and out, proven against Hugging Face transformers' own GPT-2 (gpt2.py, export.py).

Every GPT-2 here is built in the test: random weights, 2 layers x 64 wide, a byte-level BPE vocabulary trained on a
small text and laid out the way OpenAI's files are (<|endoftext|> last), saved with save_pretrained. No network.
"""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import export
import generate
import gpt2
from checkpoint import LanguageModelCheckpoint, load_checkpoint
from config import ModelConfig, UserError, run_main
from gpt import GPT
from tokenizer import EOT, TokenizerError, train_tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
transformers.logging.set_verbosity_error()

TEXT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n"
        "JULIET: O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name. naïve café ☃\n") * 4
PROMPT = "But soft, Juliet"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def write_gpt2_tokenizer(tokenizer, folder):
    """Our trained bbpe (EOT at id 0) written as OpenAI's vocab.json + merges.txt and as a `tokenizers`
    tokenizer.json, with <|endoftext|> moved to the last id, as in GPT-2's files."""
    order = [t for t, _ in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1]) if t != EOT] + [EOT]
    vocab = {t: i for i, t in enumerate(order)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tokenizer.merges)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    hf.add_special_tokens([tokenizers.AddedToken(EOT, special=True)])
    return vocab, hf


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, corpus):
    """A tiny random GPT-2 saved by transformers, with a GPT-2-style tokenizer (tokenizer.json and vocab/merges)."""
    folder = tmp_path_factory.mktemp("gpt2")
    ours = train_tokenizer("bbpe", corpus, vocab_size=300, progress=False)
    vocab, hf_tokenizer = write_gpt2_tokenizer(ours, folder)
    hf_tokenizer.save(str(folder / "tokenizer.json"))
    V = len(vocab)
    config = transformers.GPT2Config(vocab_size=V, n_positions=48, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=V - 1, eos_token_id=V - 1, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2's init leaves biases and LayerNorms at 0 and 1: give them something to map
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_model(gpt2_dir):
    model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    model.generation_config.eos_token_id = None  # greedy for exactly N tokens, as ours does
    model.generation_config.pad_token_id = model.config.vocab_size - 1
    return model


def one_line_error(capsys, main) -> str:
    """A script's main must exit 1 with one line on stderr; returns it."""
    with pytest.raises(SystemExit) as info:
        run_main(main, user_errors=(TokenizerError,))
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --- the mapping


def test_names_round_trip_and_conv1d_is_transposed():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, embedding_dim=16, num_of_layers=2, num_of_heads=2))
    hf = gpt2.to_hf_state_dict(model.state_dict(), 2)
    assert "lm_head.weight" not in hf and len(hf) == 2 + 2 * 12 + 2
    assert torch.equal(hf["transformer.h.1.attn.c_attn.weight"], model.blocks[1].attn.qkv.weight.T)  # (C, 3C)
    assert hf["transformer.h.0.mlp.c_fc.weight"].shape == (16, 64)
    back = gpt2.from_hf_state_dict(hf, model, "test")
    assert set(back) == set(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_old_names_and_mask_buffers_are_read(gpt2_dir, hf_model):
    """The hub's original gpt2 files: no 'transformer.' prefix, attn.bias / masked_bias buffers, lm_head stored."""
    weights = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    weights["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 48, 48))
    weights["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    model = GPT.from_pretrained(str(gpt2_dir))
    state = gpt2.from_hf_state_dict(weights, model, "test")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# --- import: logits and greedy tokens equal transformers' GPT-2


@pytest.mark.parametrize("tokenizer_files", ["tokenizer.json", "vocab.json + merges.txt"])
def test_logits_equal_gpt2lmheadmodel_with_and_without_padding(gpt2_dir, hf_model, tmp_path, tokenizer_files):
    folder = gpt2_dir
    if tokenizer_files != "tokenizer.json":  # a copy without tokenizer.json
        folder = tmp_path / "vocab_merges"
        folder.mkdir()
        for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
            (folder / name).write_bytes((gpt2_dir / name).read_bytes())
    model, tokenizer = gpt2.load_pretrained(str(folder))
    assert model.config.activation == "gelu_tanh" and model.config.block_size == 48
    assert tokenizer.eot_id == tokenizer.vocab_size - 1 == 299  # GPT-2's layout: the special token last
    texts = ["ROMEO: But soft, what light", "O Romeo", "naïve café ☃ and more words than that"]
    ids = [tokenizer.encode(t) for t in texts]
    T = max(map(len, ids))
    batch = torch.tensor([x + [0] * (T - len(x)) for x in ids])  # (B, T), right-padded
    mask = torch.tensor([[True] * len(x) + [False] * (T - len(x)) for x in ids])  # (B, T)
    with torch.no_grad():
        expected = hf_model(batch, attention_mask=mask.long()).logits  # (B, T, V)
        padded = model(batch, padding_mask=mask)[0]  # (B, T, V)
        alone = model(torch.tensor([ids[2]]))[0]  # (1, T2, V), no padding at all
        hf_alone = hf_model(torch.tensor([ids[2]])).logits
    assert (padded - expected)[mask].abs().max() < 1e-4
    assert (alone - hf_alone).abs().max() < 1e-4
    cropped = GPT.from_pretrained(str(folder), block_size=16)  # a shorter context keeps the first 16 positions
    with torch.no_grad():
        assert (cropped(batch[:, :16])[0] - expected[:, :16])[mask[:, :16]].abs().max() < 1e-4


@pytest.mark.parametrize("kv_cache", [True, False])
def test_greedy_generate_py_equals_transformers_generate(gpt2_dir, hf_model, capsys, kv_cache):
    model, tokenizer = gpt2.load_pretrained(str(gpt2_dir))
    ids = torch.tensor([tokenizer.encode(PROMPT)])  # (1, T)
    new = 30
    with torch.no_grad():
        expected = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
    ours = model.generate(ids, new, greedy=True, kv_cache=kv_cache)
    assert torch.equal(ours, expected)  # token for token
    flags = [f"--checkpoint={gpt2_dir}", f"--prompt={PROMPT}", "--greedy", f"--max_new_tokens={new}", "--device=cpu"]
    generate.main(flags + ([] if kv_cache else ["--no_kv_cache"]))
    assert capsys.readouterr().out == PROMPT + tokenizer.decode(expected[0, ids.size(1):].tolist()) + "\n"


# --- GPT-2's tokenizer: specials last, encodes like `tokenizers`

pieces = st.one_of(st.text(max_size=12), st.sampled_from([EOT, " ", "\n", "Romeo", " café", "<|", "|>", "'s"]))


@pytest.fixture(scope="module")
def gpt2_tokenizers(gpt2_dir):
    hf = tokenizers.Tokenizer.from_file(str(gpt2_dir / "tokenizer.json"))
    from_json = gpt2.read_tokenizer(gpt2_dir)
    (gpt2_dir / "only_vocab").mkdir(exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        (gpt2_dir / "only_vocab" / name).write_bytes((gpt2_dir / name).read_bytes())
    return hf, from_json, gpt2.read_tokenizer(gpt2_dir / "only_vocab")


@settings(max_examples=150, deadline=None)
@given(st.lists(pieces, max_size=8).map("".join))
def test_gpt2_style_tokenizer_encodes_like_tokenizers(gpt2_tokenizers, text):
    hf, *ours = gpt2_tokenizers
    expected = hf.encode(text).ids  # HF cuts out the special token wherever it appears
    for tokenizer in ours:
        assert tokenizer.eot_id == 299
        assert tokenizer.encode(text, allowed_special=True) == expected
        assert tokenizer.decode(expected) == hf.decode(expected, skip_special_tokens=False) == text


# --- export: a scratchgpt checkpoint as a Hugging Face directory


def scratch_checkpoint(folder, corpus, kind, **model_settings):
    tokenizer = train_tokenizer(kind, corpus, vocab_size={"char": None, "bpe": 200, "bbpe": 300}[kind], progress=False)
    torch.manual_seed(1)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, embedding_dim=64, num_of_layers=2,
                         num_of_heads=4, **model_settings)
    model = GPT(config).eval()
    path = folder / "model_checkpoint.tar"
    LanguageModelCheckpoint.of(model, tokenizer, step=0).save(path)
    return path, model, tokenizer


@pytest.mark.parametrize("kind, activation", [("char", "gelu"), ("bpe", "gelu"), ("bbpe", "gelu_tanh")])
def test_export_loads_in_transformers_with_the_same_logits_and_tokens(tmp_path, corpus, capsys, kind, activation):
    path, model, tokenizer = scratch_checkpoint(tmp_path, corpus, kind, activation=activation)
    out = tmp_path / "hf"
    export.main([str(path), str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "But soft, what light"
    ids = tokenizer.encode(text)
    assert hf_tokenizer.encode(text, add_special_tokens=False) == ids
    assert hf_tokenizer.decode(ids) == tokenizer.decode(ids) == text
    idx = torch.tensor([ids])  # (1, T)
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)[0]).abs().max() < 1e-4
        hf.generation_config.eos_token_id = None
        expected = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=10, do_sample=False,
                               pad_token_id=0)
    assert torch.equal(model.generate(idx, 10, greedy=True), expected)
    pipe = transformers.pipeline("text-generation", model=str(out), tokenizer=str(out))
    assert pipe(text, max_new_tokens=5, do_sample=False)[0]["generated_text"].startswith(text)

    back, back_tokenizer = gpt2.load_pretrained(str(out))  # ours -> HF -> ours: nothing lost
    assert back.config == model.config
    assert back.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    assert back_tokenizer.to_json() == tokenizer.to_json()


def test_export_refuses_what_gpt2_cannot_express(tmp_path, corpus, capsys):
    path, _, _ = scratch_checkpoint(tmp_path, corpus, "char", bias=False)
    err = one_line_error(capsys, lambda: export.main([str(path), str(tmp_path / "hf")]))
    assert "bias=False" in err and not (tmp_path / "hf").exists()
    assert "usage" in one_line_error(capsys, lambda: export.main([str(path)]))


# --- bad directories: one line, exit 1


def broken_copy(gpt2_dir, tmp_path, change):
    folder = tmp_path / "broken"
    folder.mkdir()
    for p in gpt2_dir.iterdir():
        if p.is_file():
            (folder / p.name).write_bytes(p.read_bytes())
    change(folder)
    return folder


def edit_config(**values):
    def change(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **values}))
    return change


def drop_tokens(folder):  # a tokenizer from another model: fewer tokens than the weights' rows
    (folder / "tokenizer.json").unlink()
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab = {t: i for t, i in vocab.items() if i < len(vocab) - 2}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


@pytest.mark.parametrize("change, message", [
    (lambda f: (f / "config.json").unlink(), "has no config.json"),
    (lambda f: (f / "config.json").write_text("{not json"), "config.json is not readable JSON"),
    (lambda f: (f / "model.safetensors").unlink(), "has no model.safetensors nor pytorch_model.bin"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 100), "not a readable weights file"),
    (edit_config(model_type="llama"), "model_type='llama'"),
    (edit_config(n_embd=32), "does not fit config.json"),
    (edit_config(activation_function="relu"), "activation_function='relu'"),
    (drop_tokens, "the tokenizer has 298 tokens but the model 300"),
])
def test_bad_directories_are_one_line_errors(gpt2_dir, tmp_path, capsys, change, message):
    folder = broken_copy(gpt2_dir, tmp_path, change)
    err = one_line_error(capsys, lambda: generate.main([f"--checkpoint={folder}", "--prompt=x", "--device=cpu"]))
    assert message in err


def test_pytorch_model_bin_is_read_with_weights_only(gpt2_dir, tmp_path):
    def to_bin(folder):
        from safetensors.torch import load_file
        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    folder = broken_copy(gpt2_dir, tmp_path, to_bin)
    model = GPT.from_pretrained(str(folder))
    assert torch.equal(model.tok_emb.weight, GPT.from_pretrained(str(gpt2_dir)).tok_emb.weight)
    (folder / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable weights file"):
        GPT.from_pretrained(str(folder))


def test_a_name_that_is_no_directory_asks_the_hub_and_offline_says_how(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = one_line_error(capsys, lambda: generate.main(["--checkpoint=no-such-user/no-such-gpt2", "--device=cpu"]))
    assert "not a local directory" in err and "--local-dir" in err


# --- a GPT-2 directory wherever a checkpoint is accepted


def test_init_from_fine_tunes_all_weights_and_resumes_exactly(gpt2_dir, corpus, tmp_path, monkeypatch, capsys):
    import playground
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
    flags = [corpus, f"--init_from={gpt2_dir}", "--block_size=16", "--batch_size=4", "--eval_iters=2",
             "--eval_interval=4", "--checkpoint_interval=4", "--sample_tokens=0", "--dtype=float32", "--device=cpu",
             "--learning_rate=1e-3", "--dropout=0.1", "--warmup_iters=2", "--lr_decay_iters=8"]
    playground.main(flags + [f"--out_dir={tmp_path / 'straight'}", "--max_iters=8"])
    playground.main(flags + [f"--out_dir={tmp_path / 'split'}", "--max_iters=4"])
    playground.main([f"--out_dir={tmp_path / 'split'}", "--resume", "--max_iters=8", "--device=cpu"])
    a = load_checkpoint(tmp_path / "straight" / "model_checkpoint.tar")
    b = load_checkpoint(tmp_path / "split" / "model_checkpoint.tar")
    assert a["model_config"]["block_size"] == 16 and a["model_config"]["activation"] == "gelu_tanh"
    assert all(torch.equal(t, b["model"][name]) for name, t in a["model"].items())
    pretrained = GPT.from_pretrained(str(gpt2_dir), block_size=16).state_dict()
    assert all(not torch.equal(t, pretrained[name]) for name, t in a["model"].items())  # every weight was trained
    assert "299 tokens" not in capsys.readouterr().out  # the GPT-2 tokenizer: 300 tokens, EOT last
    generate.main([f"--checkpoint={tmp_path / 'straight' / 'model_checkpoint.tar'}", "--prompt=Romeo",
                   "--max_new_tokens=5", "--device=cpu"])
    assert capsys.readouterr().out.startswith("Romeo")


def test_init_from_keeps_gpt2s_shape(gpt2_dir, corpus, tmp_path, capsys):
    import playground
    base = [corpus, f"--init_from={gpt2_dir}", f"--out_dir={tmp_path}", "--device=cpu"]
    for flag, message in [("--embedding_dim=32", "--embedding_dim=32 differs"),
                          ("--tokenizer=bbpe:300", "brings its own tokenizer"),
                          ("--block_size=64", "longer than the model's 48")]:
        assert message in one_line_error(capsys, lambda flag=flag: playground.main(base + [flag]))


def test_classify_fine_tunes_a_gpt2_directory(gpt2_dir, tmp_path):
    import csv

    import classify
    rows = [("Romeo " * (1 + i % 4), "romeo") if i % 2 else ("Juliet " * (1 + i % 3), "juliet") for i in range(24)]
    with open(tmp_path / "names.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    cfg = classify.TrainClassifierConfig(data=str(tmp_path / "names.csv"), checkpoint=str(gpt2_dir),
                                         out_dir=str(tmp_path / "out"), device="cpu", dtype="float32", max_steps=12,
                                         eval_interval=3, patience=0, batch_size=8, learning_rate=1e-2,
                                         body_learning_rate=1e-3)
    result = classify.train(cfg, quiet=True)
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    model, tokenizer, found = classify.load_classifier(str(tmp_path / "out" / "classifier.tar"), "cpu")
    assert found.model_config["activation"] == "gelu_tanh" and tokenizer.eot_id == 299
