"""The modern recipe's model options (gpt.py, attention.py): each against its defining property."""
import math

import pytest
import torch

import gpt2
import playground
from attention import MultiHeadAttention, Rotary
from checkpoint import load_model
from config import ModelConfig, UserError
from gpt import GPT, MLP, ReLUSquared
from tiny import MODERN, TINY

pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: a cache of its own per test

def tiny(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=40, block_size=16, embedding_dim=32, num_of_layers=2, num_of_heads=4,
                           **options))


# --- rotary position embeddings


def test_rotary_scores_depend_only_on_the_distance_between_positions():
    rotary = Rotary(head_size=8, max_len=64).double()
    q, k = torch.randn(2, 3, 10, 8, dtype=torch.float64), torch.randn(2, 3, 10, 8, dtype=torch.float64)
    scores = rotary(q) @ rotary(k).transpose(-2, -1)  # positions 0..9 for both
    shifted = rotary(q, start=37) @ rotary(k, start=37).transpose(-2, -1)  # the same tokens at 37..46
    assert torch.allclose(scores, shifted, atol=1e-5)  # the cos and sin tables are float32
    assert not torch.allclose(scores, q @ k.transpose(-2, -1))  # it does change the scores


def test_rotary_is_a_rotation_by_position_times_frequency():
    """Against the paper's complex-number form: pair (x_i, x_{i+D/2}) as x_i + i x_{i+D/2}, times e^(i m theta_j)."""
    D, T = 8, 12
    x = torch.randn(1, 1, T, D, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    z = torch.complex(x[..., :D // 2], x[..., D // 2:]) * torch.polar(torch.ones(T, D // 2, dtype=torch.float64),
                                                                      torch.arange(T)[:, None] * theta)
    got = Rotary(D, T).double()(x)
    assert torch.allclose(got, torch.cat((z.real, z.imag), dim=-1), atol=1e-6)  # the tables are float32
    assert torch.allclose(got.norm(dim=-1), x.norm(dim=-1))  # lengths kept


def test_rotary_backward_is_the_turn_back():
    """The hand-written backward (turn by the opposite angle) against numerical derivatives, first and second order,
    on a non-contiguous x as the model gives it (q, k are transposed views of the qkv output)."""
    rotary = Rotary(head_size=8, max_len=16).double()
    x = torch.randn(2, 10, 3, 8, dtype=torch.float64).transpose(1, 2).requires_grad_()  # (B, H, T, D), strided
    assert torch.autograd.gradcheck(lambda t: rotary(t, start=3), (x,))
    assert torch.autograd.gradgradcheck(lambda t: rotary(t, start=3) ** 2, (x,))


def test_rope_model_has_no_position_table_and_its_scores_are_shift_invariant():
    model = tiny(position="rope", qk_norm=True).double()
    assert model.pos_emb is None and model.num_parameters() == tiny().num_parameters() - 16 * 32
    attn = model.blocks[0].attn
    q, k = torch.randn(2, 1, 4, 8, 8, dtype=torch.float64).unbind(0)  # (B, H, T, D) each
    q0, k0 = attn._normalize_and_rotate(q, k, start=0)
    q5, k5 = attn._normalize_and_rotate(q, k, start=5)
    assert torch.allclose(q0 @ k0.transpose(-2, -1), q5 @ k5.transpose(-2, -1), atol=1e-5)


@pytest.mark.parametrize("backend", ["manual", "sdpa", "flash"])
@pytest.mark.parametrize("options", [dict(position="rope"), dict(position="rope", qk_norm=True), MODERN])
def test_cache_equals_no_cache_with_rotary_keys(options, backend):
    """The cache holds keys already turned; each new position is turned at cache.length, as a full pass would."""
    model = tiny(attention_backend=backend, **options).eval()
    with torch.no_grad():
        for block in model.blocks:  # zero_init would make every block the identity: give them weights to test
            torch.nn.init.normal_(block.attn.proj.weight, std=0.1)
            torch.nn.init.normal_(block.mlp.proj.weight, std=0.1)
        torch.nn.init.normal_(model.lm_head.weight, std=0.1)
    ids = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))
    caches = model.new_kv_caches(2)
    with torch.no_grad():
        model.hidden_states(ids[:, :5], kv_caches=caches)
        for t in range(5, 16):
            got = model.lm_head(model.hidden_states(ids[:, t:t + 1], kv_caches=caches)[:, -1])  # (B, V)
            assert torch.allclose(got, model(ids[:, :t + 1])[0][:, -1], atol=1e-5)
    prompt = ids[:1, :3]
    assert torch.equal(model.generate(prompt, 40, greedy=True), model.generate(prompt, 40, greedy=True, kv_cache=False))


# --- normalisation, activation, embeddings, initialisation


def test_rms_norm_gives_unit_root_mean_square_and_has_no_bias():
    model = tiny(norm="rms")
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    x = torch.randn(3, 5, 32) * 7 + 2
    y = model.ln_f(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)  # gain 1 at initialisation
    assert abs(y.mean()) > 0.05  # the mean is not removed (LayerNorm's would be ~0)
    assert model.ln_f.state_dict().keys() == {"weight"}


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, qk_norm=True).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    before = attn(x)
    with torch.no_grad():
        attn.qkv.weight[:64] *= 25.0  # the q and k rows
        attn.qkv.bias[:64] *= 25.0
    assert torch.allclose(attn(x), before, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_squared_and_its_one_pass_backward_equal_autograds(dtype):
    x = torch.randn(4, 8, 64, dtype=dtype)
    x[0, 0, :4] = 0.0  # relu's kink: the derivative there is 0 both ways
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn_like(x)
    torch.relu(a).square().backward(grad)
    ReLUSquared.apply(b).backward(grad)
    assert torch.equal(ReLUSquared.apply(x), torch.relu(x).square()) and torch.equal(a.grad, b.grad)


def test_relu_squared_mlp():
    model = tiny(activation="relu2")
    mlp: MLP = model.blocks[0].mlp
    x = torch.randn(2, 3, 32)
    assert torch.allclose(mlp(x), mlp.proj(torch.relu(mlp.fc(x)) ** 2))


def test_untied_embeddings_are_two_matrices_and_zero_init_starts_at_uniform():
    tied, untied = tiny(), tiny(tie_embeddings=False, zero_init=True)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() == tied.num_parameters() + 40 * 32
    ids = torch.randint(0, 40, (2, 16))
    _, loss = untied(ids, ids)
    assert loss.item() == pytest.approx(math.log(40), abs=1e-6)  # every token equally likely
    for block in untied.blocks:  # each block starts as the identity...
        assert not block.attn.proj.weight.any() and not block.mlp.proj.weight.any()
    loss.backward()  # ...and still learns: the zero matrices get gradients (the head's, at least, at step 0)
    assert untied.lm_head.weight.grad.abs().sum() > 0


def test_bad_options_are_one_line_errors():
    with pytest.raises(UserError, match="position='absolute' is not one of learned, rope"):
        ModelConfig(position="absolute")  # a YAML value or a checkpoint does not pass through argparse's choices
    with pytest.raises(UserError, match="must be even"):
        ModelConfig(position="rope", embedding_dim=36, num_of_heads=4)
    for name, value in [("position", "rope"), ("norm", "rms"), ("qk_norm", True), ("activation", "relu2"),
                        ("tie_embeddings", False)]:
        with pytest.raises(UserError, match=f"{name}={value} cannot be exported"):
            gpt2.hf_config(ModelConfig(vocab_size=40, **{name: value}))


# --- end to end


@pytest.mark.slow
def test_the_modern_model_trains_resumes_exactly_and_samples(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sees the fish. a dog eats a bone.\n" * 300, encoding="utf-8")
    flags = [str(corpus), *TINY, "--position=rope", "--norm=rms", "--qk_norm", "--activation=relu2",
             "--tie_embeddings=false", "--zero_init", "--bias=false", "--eval_interval=10", "--warmup_iters=3",
             "--lr_decay_iters=30"]  # the schedule must not depend on where the first part stops
    playground.main([*flags, f"--out_dir={tmp_path / 'straight'}", "--max_iters=30"])
    playground.main([*flags, f"--out_dir={tmp_path / 'split'}", "--max_iters=12"])
    playground.main([*flags, f"--out_dir={tmp_path / 'split'}", "--max_iters=30", "--resume"])
    a, tokenizer, _ = load_model(str(tmp_path / "straight" / "model_checkpoint.tar"))
    b, _, _ = load_model(str(tmp_path / "split" / "model_checkpoint.tar"))
    assert a.config.position == "rope" and not a.config.tie_embeddings
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    ids = torch.tensor([tokenizer.encode("the ")])
    text = tokenizer.decode(a.generate(ids, 20, greedy=True)[0].tolist())
    assert text.startswith("the ") and len(text) > 20
