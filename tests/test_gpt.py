"""The GPT model: causality, initial loss, learning, weight tying, parameter count, save/load."""
import math

import pytest
import torch

from config import ModelConfig
from gpt import GPT


def tiny(**overrides):
    settings = dict(vocab_size=50, block_size=16, embedding_dim=32, num_of_layers=2, num_of_heads=4)
    settings.update(overrides)
    return GPT(ModelConfig(**settings))


def test_changing_a_future_token_never_changes_earlier_logits():
    torch.manual_seed(0)
    model = tiny().eval()
    idx = torch.randint(0, 50, (2, 16))
    logits, _ = model(idx)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 50
    logits2, _ = model(changed)
    assert torch.allclose(logits[:, :9], logits2[:, :9], atol=1e-6)
    assert not torch.allclose(logits[:, 9:], logits2[:, 9:])


@pytest.mark.parametrize("vocab_size", [50, 500])
def test_loss_at_init_is_close_to_uniform_guessing(vocab_size):
    torch.manual_seed(0)
    model = tiny(vocab_size=vocab_size)
    idx = torch.randint(0, vocab_size, (8, 16))
    targets = torch.randint(0, vocab_size, (8, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(vocab_size)) < 0.1


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = tiny()
    idx = torch.randint(0, 50, (4, 16))
    targets = torch.randint(0, 50, (4, 16))
    optimizer = model.configure_optimizer(learning_rate=3e-3, weight_decay=0.0)
    for _ in range(200):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_output_layer_is_tied_to_token_embedding():
    model = tiny()
    assert model.lm_head.weight is model.tok_emb.weight
    with torch.no_grad():
        model.tok_emb.weight[3, 0] = 123.0
    assert model.lm_head.weight[3, 0] == 123.0


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_matches_the_formula(bias):
    V, T, C, N = 50, 16, 32, 3
    model = tiny(vocab_size=V, block_size=T, embedding_dim=C, num_of_layers=N, bias=bias)
    # per block: qkv 3C^2, attention projection C^2, MLP 4C^2 + 4C^2 = 12 C^2 weights;
    # biases 3C + C + 4C + C and two LayerNorms (gain + bias) 4C = 13C; without biases only the 2C gains remain.
    per_block = 12 * C * C + (13 * C if bias else 2 * C)
    final_ln = 2 * C if bias else C
    expected = V * C + T * C + N * per_block + final_ln  # the tied output matrix is the token embedding
    assert model.num_parameters() == expected
    assert model.num_parameters(include_embeddings=False) == expected - V * C - T * C


def test_init_follows_gpt2():
    torch.manual_seed(0)
    model = tiny(embedding_dim=64, num_of_layers=4)
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.002
    scaled = model.blocks[0].mlp.proj.weight.std().item()
    assert abs(scaled - 0.02 / math.sqrt(2 * 4)) < 0.001
    assert abs(model.blocks[0].attn.proj.weight.std().item() - 0.02 / math.sqrt(8)) < 0.001
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0


def test_weight_decay_only_on_matrices():
    model = tiny()
    optimizer = model.configure_optimizer(learning_rate=1e-3, weight_decay=0.1)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"])
    n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n == model.num_parameters()


def test_save_then_load_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = tiny().eval()
    path = tmp_path / "m.tar"
    torch.save({"model": model.state_dict()}, path)
    loaded = tiny().eval()
    loaded.load_state_dict(torch.load(path, weights_only=True)["model"])
    idx = torch.randint(0, 50, (2, 16))
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert loaded.lm_head.weight is loaded.tok_emb.weight


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_kv_cache_generation_equals_full_recompute(backend):
    torch.manual_seed(0)
    model = tiny(attention_backend=backend).eval()
    prompt = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=8, temperature=0)
        plain = prompt
        for _ in range(8):
            logits, _ = model(plain)
            plain = torch.cat([plain, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, plain)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))
