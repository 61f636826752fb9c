"""flash_attention.py against torch: FlashAttention must give torch's values and gradients, and hold no L x S matrix.

torch.nn.functional.scaled_dot_product_attention is the judge; attention_reference (the obvious formula) must agree
too. Most tests use small blocks (block_q=8, block_k=16) so that tiny inputs run through many blocks, partial last
blocks and causal diagonals; one test runs the default block sizes.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from attention import KVCache, MultiHeadAttention, attention_reference, causal_mask, flash_attention
from config import ModelConfig
from gpt import GPT

SMALL = dict(block_q=8, block_k=16)


def qkv(B, H, L, S, E, Ev=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, L, E), (B, H, S, E), (B, H, S, Ev or E)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def outputs_and_grads(fn, q, k, v, **kwargs):
    """fn's output and the gradients of q, k, v for the loss sum(out * grad), grad fixed by a seed."""
    out = fn(q, k, v, **kwargs)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(4))
    return [out, *torch.autograd.grad(out, (q, k, v), grad)]


def assert_close_to_scale(got, expected, rel=1e-5):
    """max |got - expected| < rel * scale, scale = max |expected| but at least 1, the size of the inputs and of the
    upstream gradient (unit normals): float32 sums of many terms err relative to their size, and a gradient that is
    zero in exact arithmetic (one key: softmax is constant) comes out as rounding noise on both sides."""
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        error, scale = (g - e).abs().max().item(), max(e.abs().max().item(), 1.0)
        assert error <= rel * scale, f"{name}: max error {error:.2e} = {error / scale:.2e} of the scale {scale:.2e}"


def assert_same_as_torch(q, k, v, key_mask=None, is_causal=False, rel=1e-5, **blocks):
    """flash_attention against torch SDPA (given the full mask it stands for) and against attention_reference."""
    L, S = q.size(-2), k.size(-2)
    full = key_mask
    if is_causal:  # torch 2.13 refuses is_causal with a mask on some paths: give it the combined mask instead
        causal = causal_mask(L, S, q.device)  # (L, S)
        full = causal if key_mask is None else key_mask & causal  # (..., L, S)
    got = outputs_and_grads(flash_attention, q, k, v, attn_mask=key_mask, is_causal=is_causal, **blocks)
    expected = outputs_and_grads(F.scaled_dot_product_attention, q, k, v, attn_mask=full)
    assert_close_to_scale(got, expected, rel)
    reference = outputs_and_grads(attention_reference, q, k, v, attn_mask=full)
    assert_close_to_scale(got, reference, rel)


SHAPES = [  # B, H, L, S, E
    (2, 3, 40, 40, 16),  # 5 query blocks, 3 key blocks (the last one partial)
    (1, 2, 37, 37, 32),  # no size a multiple of a block
    (2, 2, 1, 1, 16),  # T = 1
    (2, 2, 1, 23, 16),  # one query against several keys
    (2, 3, 19, 45, 64),  # fewer queries than keys
    (2, 3, 45, 19, 64),  # more queries than keys (causal: the last queries see every key)
    (1, 2, 33, 33, 128),  # a large head
]


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_same_as_torch(shape, is_causal):
    q, k, v = qkv(*shape)
    assert_same_as_torch(q, k, v, is_causal=is_causal, **SMALL)


@pytest.mark.parametrize("is_causal", [False, True])
def test_default_block_sizes(is_causal):
    q, k, v = qkv(1, 2, 300, 300, 32)  # 3 query blocks of 128, 128, 44; key blocks of 256 and 44
    assert_same_as_torch(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("scale", [0.05, 0.3, 2.0])
def test_scale(scale):
    q, k, v = qkv(2, 2, 20, 20, 16)
    got = outputs_and_grads(flash_attention, q, k, v, is_causal=True, scale=scale, **SMALL)
    expected = outputs_and_grads(F.scaled_dot_product_attention, q, k, v, is_causal=True, scale=scale)
    assert_close_to_scale(got, expected)


def padding(B, S, lengths, left=False):
    """(B, 1, 1, S) boolean key mask: True for the first (or, left=True, the last) lengths[b] keys of batch b."""
    positions = torch.arange(S).flip(0) if left else torch.arange(S)  # (S,)
    return (positions < torch.tensor(lengths).view(B, 1)).view(B, 1, 1, S)  # (B, 1, 1, S)


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(3, 2, 40, 40, 16), (3, 2, 21, 35, 32), (3, 1, 35, 21, 64)], ids=str)
def test_padding_mask(shape, is_causal, left):
    """Key padding; batch 2 is all padding (its rows are empty: zeros), and with left padding and is_causal the
    first queries of batch 0 have no key they may see (zeros too)."""
    q, k, v = qkv(*shape)
    B, S = shape[0], shape[3]
    assert_same_as_torch(q, k, v, padding(B, S, [S - 17, S, 0], left), is_causal, **SMALL)


def test_float_key_bias():
    q, k, v = qkv(2, 3, 30, 30, 16)
    bias = torch.randn(2, 1, 1, 30, generator=torch.Generator().manual_seed(1))  # (B, 1, 1, S)
    bias[0, ..., 20:] = float("-inf")
    for is_causal in (False, True):
        full = bias.masked_fill(~causal_mask(30, 30, q.device), float("-inf")) if is_causal else bias
        got = outputs_and_grads(flash_attention, q, k, v, attn_mask=bias, is_causal=is_causal, **SMALL)
        assert_close_to_scale(got, outputs_and_grads(F.scaled_dot_product_attention, q, k, v, attn_mask=full))


def test_empty_rows_give_zeros_and_finite_gradients():
    q, k, v = qkv(2, 2, 20, 20, 16)
    mask = padding(2, 20, [20, 0])  # batch 1 has no keys at all
    out, dq, dk, dv = outputs_and_grads(flash_attention, q, k, v, attn_mask=mask, is_causal=True, **SMALL)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.equal(dq[1], torch.zeros_like(dq[1]))
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 7, 7, 4), (2, 1, 5, 9, 6), (1, 1, 9, 4, 3)], ids=str)
def test_gradcheck(shape, is_causal):
    """The hand-written backward against finite differences, float64, through several blocks and a padding mask."""
    q, k, v = qkv(*shape, dtype=torch.float64)
    mask = padding(shape[0], shape[3], [shape[3] - 2] * shape[0], left=True)  # (B, 1, 1, S)
    blocks = dict(block_q=3, block_k=2)
    assert torch.autograd.gradcheck(lambda q, k, v: flash_attention(q, k, v, is_causal=is_causal, **blocks), (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **blocks), (q, k, v))


def test_bfloat16_inputs_keep_float32_statistics():
    """bf16 in, bf16 out; inside, everything is float32, so the result is the float32 one, rounded once."""
    q, k, v = qkv(1, 2, 50, 50, 32)
    exact = flash_attention(q, k, v, is_causal=True, **SMALL)
    half = flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True, **SMALL)
    assert half.dtype == torch.bfloat16
    rounded = flash_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), is_causal=True, **SMALL)
    torch.testing.assert_close(half, rounded.bfloat16())
    torch.testing.assert_close(half.float(), exact, atol=3e-2, rtol=3e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast is off inside: same numbers
        torch.testing.assert_close(flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True, **SMALL),
                                   half)


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation returns while the mode is on."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("is_causal", [False, True])
def test_no_tensor_of_size_L_by_S(is_causal):
    """The point of FlashAttention: forward and backward never hold a matrix of scores for all queries and keys."""
    q, k, v = qkv(1, 2, 256, 256, 16)
    with LargestTensor() as largest:
        outputs_and_grads(flash_attention, q, k, v, is_causal=is_causal, block_q=32, block_k=64)
    assert largest.numel <= max(2 * 32 * 64, q.numel()) < 2 * 256 * 256  # a block of scores, or q, k, v, O
    with LargestTensor() as largest:
        outputs_and_grads(attention_reference, q, k, v, is_causal=is_causal)
    assert largest.numel >= 2 * 256 * 256  # the test would see one


def test_mask_errors():
    q, k, v = qkv(1, 2, 6, 6, 8)
    with pytest.raises(ValueError, match="key mask"):
        flash_attention(q, k, v, attn_mask=torch.ones(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="no gradient"):
        flash_attention(q, k, v, attn_mask=torch.zeros(1, 6, requires_grad=True))


def twin_modules(causal, dropout=0.0):
    torch.manual_seed(0)
    manual = MultiHeadAttention(32, 4, dropout=dropout, causal=causal, backend="manual").double()
    flash = MultiHeadAttention(32, 4, dropout=dropout, causal=causal, backend="flash").double()
    flash.load_state_dict(manual.state_dict())
    return manual, flash


@pytest.mark.parametrize("with_padding", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_flash_backend_equals_manual(causal, with_padding):
    manual, flash = twin_modules(causal)
    x = torch.randn(3, 20, 32, dtype=torch.float64)
    padding_mask = torch.arange(20) < torch.tensor([[20], [13], [0]]) if with_padding else None  # (B, T)
    results = []
    for module in (manual, flash):
        xi = x.clone().requires_grad_()
        out = module(xi, padding_mask)
        out.backward(torch.ones_like(out))
        results.append([out, xi.grad] + [p.grad for p in module.parameters()])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_flash_backend_kv_cache_and_dropout_use_the_manual_path():
    """A cache step (prefill, then one token) and training with dropout give what the manual backend gives."""
    manual, flash = twin_modules(causal=True, dropout=0.1)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    manual.eval(), flash.eval()
    caches = [KVCache(2, 4, 12, 8, dtype=torch.float64) for _ in range(2)]
    torch.testing.assert_close(flash(x[:, :5], kv_cache=caches[1]), manual(x[:, :5], kv_cache=caches[0]))
    torch.testing.assert_close(flash(x[:, 5:6], kv_cache=caches[1]), manual(x[:, 5:6], kv_cache=caches[0]))
    manual.train(), flash.train()
    torch.manual_seed(1)
    expected = manual(x)
    torch.manual_seed(1)
    torch.testing.assert_close(flash(x), expected)  # the same dropout masks: the same path


def test_gpt_with_flash_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    settings = dict(vocab_size=50, block_size=40, embedding_dim=32, num_of_layers=2, num_of_heads=4)
    manual = GPT(ModelConfig(**settings, attention_backend="manual"))
    flash = GPT(ModelConfig(**settings, attention_backend="flash"))
    flash.load_state_dict(manual.state_dict())
    idx, targets = torch.randint(0, 50, (2, 2, 40), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (manual, flash):
        _, loss = model(idx, targets)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-6)
    for (name, p), q in zip(manual.named_parameters(), flash.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
