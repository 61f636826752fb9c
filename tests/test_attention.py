"""attention.py against torch: the hand-written attention must give torch's values and gradients, everywhere.

Three implementations are compared: torch.nn.functional.scaled_dot_product_attention (the judge), attention_reference
(the obvious formula, autograd's backward) and scaled_dot_product_attention (the fast path, our own backward, causal
blocks of attention.BLOCK_ROWS = 64 queries; `small_blocks` shrinks them to run the block loop on tiny inputs).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import attention
from attention import KVCache, MultiHeadAttention, attention_reference, causal_mask, scaled_dot_product_attention

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_ROWS", 3)


def run(fn, q, k, v, grad, **kwargs):
    """Output of fn and the gradients of q, k, v (and of a float mask, if it needs one) for the loss sum(out * grad)."""
    out = fn(q, k, v, **kwargs)
    inputs = [q, k, v] + [m for m in [kwargs.get("attn_mask")] if m is not None and m.requires_grad]
    return [out, *torch.autograd.grad(out, inputs, grad)]


def assert_same_as_torch(q, k, v, torch_kwargs=None, **kwargs):
    """Ours (fast path and reference) against torch's, values and gradients."""
    torch_kwargs = kwargs if torch_kwargs is None else torch_kwargs
    grad = torch.randn(q.shape[:-1] + v.shape[-1:], dtype=q.dtype, generator=torch.Generator().manual_seed(4))
    expected = run(F.scaled_dot_product_attention, q, k, v, grad, **torch_kwargs)
    for fn in (scaled_dot_product_attention, attention_reference):
        got = run(fn, q, k, v, grad, **kwargs)
        for name, g, e in zip(["out", "dq", "dk", "dv", "dmask"], got, expected):
            torch.testing.assert_close(g, e, **TOL[q.dtype], msg=lambda m, what=f"{fn.__name__} {name}": f"{what}: {m}")


def qkv(B, H, L, S, E, Ev=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, L, E), (B, H, S, E), (B, H, S, Ev or E)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


SHAPES = [  # B, H, L, S, E, Ev
    (2, 3, 8, 8, 16, 16),
    (1, 1, 7, 7, 24, 24),  # odd sizes, one head
    (2, 2, 1, 1, 8, 8),  # T = 1
    (2, 3, 5, 9, 16, 16),  # fewer queries than keys
    (2, 3, 9, 5, 16, 16),  # more queries than keys
    (2, 2, 1, 6, 8, 8),  # one query against several keys (a decoding step)
    (2, 3, 8, 8, 16, 12),  # value size != query size
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_no_mask(shape, scale, is_causal, dtype):
    q, k, v = qkv(*shape, dtype=dtype)
    assert_same_as_torch(q, k, v, is_causal=is_causal, scale=scale)


def test_causal_blocks_at_the_default_size():
    q, k, v = qkv(1, 2, 150, 150, 8)  # 3 blocks of 64, 64 and 22 queries
    assert_same_as_torch(q, k, v, is_causal=True)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 11, 11, 8, 8), (1, 2, 10, 13, 8, 6), (2, 1, 13, 10, 8, 8)], ids=str)
def test_causal_blocks(small_blocks, shape, is_causal):
    """The block loop (blocks of 3 queries here, with a partial last block) gives the same values and gradients."""
    q, k, v = qkv(*shape, dtype=torch.float64)
    assert_same_as_torch(q, k, v, is_causal=is_causal)
    L, S = shape[2], shape[3]
    mask = torch.rand(L, S, generator=torch.Generator().manual_seed(1)) > 0.3
    assert_same_as_torch(q, k, v, attn_mask=mask, is_causal=is_causal,
                         torch_kwargs=dict(attn_mask=mask & causal_mask(L, S, q.device) if is_causal else mask))


def masks(B, H, L, S, dtype):
    """name -> attn_mask: boolean and float, full size and broadcast, including rows with every key masked."""
    g = torch.Generator().manual_seed(2)
    full = torch.rand(B, H, L, S, generator=g) > 0.4  # (B, H, L, S), some rows may be all False
    full[0, 0, 1] = False  # certainly one fully masked row
    padding = torch.ones(B, 1, 1, S, dtype=torch.bool)  # (B, 1, 1, S), the last keys of batch 0 are padding
    padding[0, ..., S // 2:] = False
    per_head = torch.rand(1, H, L, S, generator=g) > 0.4  # (1, H, L, S)
    per_query = torch.rand(L, 1, generator=g) > 0.3  # (L, 1): whole rows on or off
    bias = torch.randn(L, S, generator=g, dtype=dtype)  # (L, S) float, added to the scores
    bias_inf = bias.masked_fill(torch.rand(L, S, generator=g) > 0.6, float("-inf"))
    bias_inf[-1] = float("-inf")  # a float mask row with nothing left
    return dict(bool_full=full, bool_padding=padding, bool_per_head=per_head, bool_per_query=per_query,
                bool_2d=full[0, 0], float_2d=bias, float_inf=bias_inf,
                float_full=torch.where(full, 0.5, -math.inf).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8, 16, 16), (2, 3, 5, 9, 16, 8), (2, 3, 9, 5, 16, 16),
                                   (1, 1, 7, 7, 24, 24)], ids=str)
@pytest.mark.parametrize("mask_name", list(masks(2, 3, 8, 8, torch.float32)))
def test_masks(mask_name, shape, dtype):
    q, k, v = qkv(*shape, dtype=dtype)
    B, H, L, S = shape[:4]
    mask = masks(B, H, L, S, dtype)[mask_name]
    assert_same_as_torch(q, k, v, attn_mask=mask)
    assert_same_as_torch(q, k, v, attn_mask=mask, scale=0.7)


@pytest.mark.parametrize("mask_name", ["bool_full", "bool_padding", "float_2d", "float_inf"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8, 16, 16), (2, 3, 5, 9, 16, 8), (2, 3, 9, 5, 16, 16)], ids=str)
def test_causal_and_mask(shape, mask_name):
    """is_causal with attn_mask: both must allow. torch 2.13 refuses the pair, so it gets the combined mask."""
    q, k, v = qkv(*shape, dtype=torch.float64)
    B, H, L, S = shape[:4]
    mask = masks(B, H, L, S, torch.float64)[mask_name]
    causal = causal_mask(L, S, q.device)
    combined = mask & causal if mask.dtype == torch.bool else mask.masked_fill(~causal, float("-inf"))
    assert_same_as_torch(q, k, v, attn_mask=mask, is_causal=True, torch_kwargs=dict(attn_mask=combined))


def test_fully_masked_rows_give_zeros_and_zero_gradients():
    q, k, v = qkv(1, 2, 4, 5, 8, dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False
    for fn in (scaled_dot_product_attention, attention_reference):
        out = fn(q, k, v, attn_mask=mask)
        assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
        (dq,) = torch.autograd.grad(out.sum(), q)
        assert torch.equal(dq[:, :, 2], torch.zeros_like(dq[:, :, 2])) and torch.isfinite(dq).all()


def test_float_mask_gradient():
    """A float mask that needs a gradient (a learned bias) goes to the reference path and gets torch's gradient."""
    q, k, v = qkv(2, 3, 6, 7, 8, dtype=torch.float64)
    bias = torch.randn(3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert_same_as_torch(q, k, v, attn_mask=bias)


def test_broadcast_batch_dimensions():
    """Leading dimensions broadcast: keys and values shared by every head, and a mask with more batch dimensions."""
    q, _, _ = qkv(2, 3, 6, 6, 8, dtype=torch.float64)
    k, v = [torch.randn(2, 1, 6, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    out = scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = F.scaled_dot_product_attention(q, k.expand(2, 3, 6, 8), v.expand(2, 3, 6, 8), is_causal=True)
    torch.testing.assert_close(out, expected, **TOL[torch.float64])
    mask = torch.rand(4, 2, 3, 6, 6) > 0.3  # (4, B, H, L, S): torch refuses masks that grow the output
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (4, B, H, L, D)
    expected = F.scaled_dot_product_attention(q.expand(4, -1, -1, -1, -1), k.expand(4, 2, 3, 6, 8),
                                              v.expand(4, 2, 3, 6, 8), attn_mask=mask)
    torch.testing.assert_close(out, expected, **TOL[torch.float64])


def test_no_batch_dimensions_and_non_contiguous_inputs():
    q, k, v = qkv(1, 1, 6, 6, 8, dtype=torch.float64)
    q2, k2, v2 = q[0, 0], k[0, 0], v[0, 0]  # (L, E), no batch at all
    torch.testing.assert_close(scaled_dot_product_attention(q2, k2, v2, is_causal=True),
                               F.scaled_dot_product_attention(q2, k2, v2, is_causal=True), **TOL[torch.float64])
    x = torch.randn(2, 6, 3 * 12, dtype=torch.float64, requires_grad=True)  # as in MultiHeadAttention
    q, k, v = [t.view(2, 6, 3, 4).transpose(1, 2) for t in x.split(12, dim=2)]  # 3 x (2, 3, 6, 4), strided views
    assert_same_as_torch(q, k, v, is_causal=True)


def test_common_calls_take_the_fast_path(monkeypatch):
    """The speed of MultiHeadAttention rests on these calls reaching the fast path (the reference gives the same
    values, so the tests above would not notice a silent fallback)."""
    def fallback(*args, **kwargs):
        raise AssertionError("fell back to attention_reference")

    monkeypatch.setattr(attention, "attention_reference", fallback)
    q, k, v = qkv(2, 3, 8, 8, 16)
    scaled_dot_product_attention(q, k, v, is_causal=True)  # training
    scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(2, 1, 1, 8, dtype=torch.bool))  # padding
    scaled_dot_product_attention(q[:, :, -3:], k, v, attn_mask=causal_mask(3, 8, q.device, 5))  # KV cache
    scaled_dot_product_attention(q[:, :, -1:], k, v)  # KV cache, one token


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck(small_blocks, is_causal):
    q, k, v = qkv(1, 2, 7, 7, 4, 3, dtype=torch.float64)
    mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[4] = False  # a fully masked row
    bias = torch.randn(2, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=is_causal),
                                    (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal),
                                    (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v, b: attention_reference(q, k, v, b, is_causal=is_causal),
                                    (q, k, v, bias))


def test_dropout():
    """dropout_p > 0: links are dropped (some attention weights are 0), survivors scaled up so that the average over
    many draws is the output without dropout, and the same seed gives the same draw."""
    B, H, L, S = 2, 2, 6, 6
    q, k, _ = qkv(B, H, L, S, 8)
    identity = torch.eye(S).expand(B, H, S, S)  # v = I makes the output the attention weights themselves
    weights = scaled_dot_product_attention(q, k, identity, is_causal=True)  # (B, H, L, S)

    torch.manual_seed(0)
    dropped = scaled_dot_product_attention(q, k, identity, dropout_p=0.5, is_causal=True)
    torch.manual_seed(0)
    assert torch.equal(dropped, scaled_dot_product_attention(q, k, identity, dropout_p=0.5, is_causal=True))
    allowed = causal_mask(L, S, q.device)
    assert (dropped[..., allowed] == 0).any()  # some links dropped ...
    kept = dropped[..., allowed] != 0
    torch.testing.assert_close(dropped[..., allowed][kept], 2 * weights[..., allowed][kept])  # ... the rest doubled
    assert (dropped[..., ~allowed] == 0).all()

    draws = 10_000  # as a batch dimension: every copy gets its own dropout draw
    torch.manual_seed(1)
    many = scaled_dot_product_attention(q.expand(draws, B, H, L, 8), k.expand(draws, B, H, S, 8),
                                        identity.expand(draws, B, H, S, S), dropout_p=0.5, is_causal=True)
    torch.testing.assert_close(many.mean(0), weights, atol=0.04, rtol=0)  # std of the mean <= 1 / sqrt(draws)


def test_causal_mask_example():
    assert causal_mask(2, 3, torch.device("cpu")).tolist() == [[True, False, False], [True, True, False]]
    assert causal_mask(2, 3, torch.device("cpu"), 1).tolist() == [[True, True, False], [True, True, True]]


def test_masks_are_cached_in_eager_mode_and_built_afresh_while_torch_compile_traces(monkeypatch):
    cpu = torch.device("cpu")
    assert causal_mask(5, 7, cpu) is causal_mask(5, 7, cpu)  # eager: one tensor per shape
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as dynamo answers while it traces
    traced = causal_mask(5, 7, cpu)
    assert traced is not causal_mask(5, 7, cpu) and torch.equal(traced, causal_mask.__wrapped__(5, 7, cpu))


# ---------------------------------------------------------------------------------------------------------------------
# MultiHeadAttention


def twin_modules(causal, dropout=0.0):
    torch.manual_seed(0)
    manual = MultiHeadAttention(24, 3, dropout=dropout, causal=causal, backend="manual").double()
    sdpa = MultiHeadAttention(24, 3, dropout=dropout, causal=causal, backend="sdpa").double()
    sdpa.load_state_dict(manual.state_dict())
    return manual, sdpa


@pytest.mark.parametrize("with_padding", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_manual_backend_equals_sdpa(causal, with_padding):
    manual, sdpa = twin_modules(causal)
    x = torch.randn(3, 9, 24, dtype=torch.float64)
    padding = torch.ones(3, 9, dtype=torch.bool)  # right padding of different lengths
    padding[0, 6:] = False
    padding[1, 2:] = False
    padding_mask = padding if with_padding else None
    grad = torch.randn(3, 9, 24, dtype=torch.float64)
    results = []
    for module in (manual, sdpa):
        xi = x.clone().requires_grad_()
        out = module(xi, padding_mask)
        out.backward(grad)
        results.append([out, xi.grad] + [p.grad for p in module.parameters()])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, **TOL[torch.float64])


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_kv_cache_equals_full_recompute(backend):
    torch.manual_seed(0)
    module = MultiHeadAttention(24, 3, backend=backend).double().eval()
    x = torch.randn(2, 12, 24, dtype=torch.float64)
    full = module(x)  # (2, 12, 24)
    cache = KVCache(2, 3, 12, 8, dtype=torch.float64)
    pieces = [module(x[:, :5], kv_cache=cache)]  # prefill 5 tokens
    pieces += [module(x[:, t:t + 1], kv_cache=cache) for t in range(5, 8)]  # then one at a time
    pieces.append(module(x[:, 8:12], kv_cache=cache))  # then 4 at once
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL[torch.float64])
    cache.reset(5)  # forget tokens 5.. and redo them in one go
    torch.testing.assert_close(module(x[:, 5:12], kv_cache=cache), full[:, 5:], **TOL[torch.float64])
    with pytest.raises(ValueError, match="overflow"):
        module(x[:, :1], kv_cache=cache)


@pytest.mark.parametrize("backend", ["manual", "sdpa"])
@pytest.mark.parametrize("causal", [True, False])
def test_padding_keys_do_not_matter(causal, backend):
    """A real token's output doesn't depend on what sits at padded positions; and causal outputs ignore the future."""
    torch.manual_seed(0)
    module = MultiHeadAttention(24, 3, causal=causal, backend=backend).double()
    x = torch.randn(2, 8, 24, dtype=torch.float64)
    padding = torch.ones(2, 8, dtype=torch.bool)
    padding[0, 5:] = False
    padding[1, 7:] = False
    changed = torch.where(padding.unsqueeze(-1), x, torch.randn_like(x))  # new values at padded positions only
    out, out_changed = module(x, padding), module(changed, padding)
    torch.testing.assert_close(out[padding], out_changed[padding], **TOL[torch.float64])
    assert not torch.allclose(out[~padding], out_changed[~padding])  # the padded positions themselves did change
    if causal:
        future = x.clone()
        future[:, 4:] = torch.randn(2, 4, 24, dtype=torch.float64)
        torch.testing.assert_close(module(future)[:, :4], module(x)[:, :4], **TOL[torch.float64])


def test_constructor_errors():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="backend"):
        MultiHeadAttention(12, 3, backend="fused")


def test_is_causal_with_a_mask_combines_both_like_torch():
    """torch's fused CPU kernel ANDs the two (its math fallback, e.g. with Ev != E or dropout, raises instead)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True), expected)
