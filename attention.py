"""Multi-head attention, written out by hand (Vaswani et al. 2017, "Attention Is All You Need", section 3.2).

Two pieces:

- `scaled_dot_product_attention(q, k, v, ...)`: eq. 1 of the paper, softmax(q k^T / sqrt(d_k)) v, with the same
  arguments and the same results as `torch.nn.functional.scaled_dot_product_attention` (tests/test_attention.py
  proves it, forward and backward).
- `MultiHeadAttention`: section 3.2.2 — project the input to queries, keys and values, split them into heads, attend
  in every head at once, merge the heads and project back. Causal (GPT) or bidirectional (BERT), with an optional
  padding mask, and a key/value cache so that generating one more token costs one position, not the whole context.

Shape letters used in the comments:
    B batch, H heads, L query length, S key length, E query/key size, Ev value size,
    T time (tokens in the input), C channels (embedding_dim), D head size (C // H).

Read next: gpt.py, which stacks this into a GPT.
"""
import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F


@lru_cache(maxsize=32)
def causal_mask(L: int, S: int, device: torch.device, offset: int = 0) -> torch.Tensor:
    """Boolean (L, S) mask, True where query i may attend to key j, that is j <= i + offset.

    offset=0 is torch's `is_causal` (aligned top-left); with a KV cache the L new queries sit at the end of S keys,
    so offset = S - L aligns the diagonal bottom-right.
    causal_mask(2, 3) -> [[True, False, False], [True, True, False]]
    """
    return torch.ones(L, S, dtype=torch.bool, device=device).tril(diagonal=offset)  # (L, S)


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """softmax(q k^T * scale + mask) v, matching torch.nn.functional.scaled_dot_product_attention.

    q: (..., L, E), k: (..., S, E), v: (..., S, Ev) -> (..., L, Ev). The leading dimensions broadcast.
    attn_mask: boolean (True = may attend) or float (added to the scores), broadcastable to (..., L, S).
    is_causal: query i attends to keys 0..i. Like torch, the mask is aligned top-left when L != S (query i sees keys
        0..i even if there are more keys than queries), and an explicit attn_mask is combined with it (both must allow).
    scale: defaults to 1/sqrt(E), the paper's 1/sqrt(d_k) (eq. 1).
    A query whose keys are all masked gets an output of zeros (torch does the same), not NaN.
    """
    L, S = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale

    # Fold the mask arguments into one boolean "may attend" mask, or an additive float one.
    if is_causal:
        causal = causal_mask(L, S, q.device)  # (L, S)
        if attn_mask is None:
            attn_mask = causal
        elif attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & causal  # (..., L, S)
        else:
            attn_mask = attn_mask.masked_fill(~causal, float("-inf"))  # (..., L, S)

    # A row with every key masked would be softmax(-inf, ..., -inf) = NaN. Find such rows on the (small) mask, let
    # them attend everywhere instead, and zero their output at the end, so neither values nor gradients see a NaN.
    empty_rows = None
    if attn_mask is not None and not (is_causal and attn_mask is causal):  # a causal mask never empties a row
        blocked = ~attn_mask if attn_mask.dtype == torch.bool else torch.isneginf(attn_mask)
        empty = blocked.all(dim=-1, keepdim=True)  # (..., L, 1)
        if empty.any():
            empty_rows = empty
            attn_mask = attn_mask | empty if attn_mask.dtype == torch.bool else attn_mask.masked_fill(empty, 0.0)

    # Scale the queries (L x E numbers) rather than the scores (L x S numbers): same result, less work.
    att = (q * scale) @ k.transpose(-2, -1)  # (..., L, S)
    if attn_mask is not None:
        if torch.broadcast_shapes(att.shape, attn_mask.shape) != att.shape:  # the mask has more batch dims than q
            att = att.expand(torch.broadcast_shapes(att.shape, attn_mask.shape))  # (..., L, S)
            att = att.contiguous()
        if attn_mask.dtype == torch.bool:
            att.masked_fill_(~attn_mask, float("-inf"))  # -inf, never a finite stand-in: exp(-inf) is exactly 0
        else:
            att.add_(attn_mask)
    att = torch.softmax(att, dim=-1)  # (..., L, S), each row sums to 1
    if empty_rows is not None:
        att = att.masked_fill(empty_rows, 0.0)  # (..., L, S)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)  # drop whole attention links; survivors are scaled by 1/(1-p)
    return att @ v  # (..., L, Ev)


class KVCache:
    """The keys and values of the tokens seen so far, for one attention layer.

    Generating token t+1 needs the keys and values of tokens 0..t; they never change (the model is causal), so we
    keep them instead of recomputing them. The buffers are allocated once at full size and filled in place, so
    appending a token copies only that token's keys and values.
    """

    def __init__(self, batch_size: int, num_heads: int, max_len: int, head_size: int, device=None, dtype=None):
        shape = (batch_size, num_heads, max_len, head_size)
        self.k = torch.empty(shape, device=device, dtype=dtype)  # (B, H, max_len, D)
        self.v = torch.empty(shape, device=device, dtype=dtype)  # (B, H, max_len, D)
        self.length = 0

    def append(self, k, v):
        """Store the new positions' keys and values; return the keys and values of every position so far."""
        T = k.size(2)
        if self.length + T > self.k.size(2):
            raise ValueError(f"KV cache overflow: {self.length} + {T} positions > {self.k.size(2)}")
        self.k[:, :, self.length:self.length + T] = k
        self.v[:, :, self.length:self.length + T] = v
        self.length += T
        return self.k[:, :, :self.length], self.v[:, :, :self.length]  # (B, H, length, D) views, no copies

    def reset(self, length: int = 0):
        """Forget every position from `length` on."""
        self.length = length


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. section 3.2.2) with the output projection and residual dropout.

    causal=True gives GPT's masked attention (a token sees only itself and the past); causal=False gives BERT's
    bidirectional attention. backend="manual" runs the hand-written function above, "sdpa" torch's fused kernel.
    """

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 causal: bool = True, backend: str = "manual"):
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(f"embedding_dim={embedding_dim} is not divisible by num_heads={num_heads}")
        if backend not in ("manual", "sdpa"):
            raise ValueError(f"backend={backend!r}; use 'manual' or 'sdpa'")
        self.num_heads, self.causal, self.backend, self.dropout = num_heads, causal, backend, dropout
        # One matrix makes q, k and v together: a single (C -> 3C) matmul is faster than three (C -> C) ones.
        self.qkv = nn.Linear(embedding_dim, 3 * embedding_dim, bias=bias)
        self.proj = nn.Linear(embedding_dim, embedding_dim, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, padding_mask=None, kv_cache: KVCache | None = None):
        """x: (B, T, C) -> (B, T, C).

        padding_mask: optional (B, T) boolean, True for real tokens; no query attends to a padding key.
        kv_cache: optional KVCache; x then holds only the new positions, which attend to every cached one.
        """
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # (B, H, S, D), S = cached + new positions
        S = k.size(2)

        # Masks: causal alone goes through is_causal (the fast path); a cache or padding needs an explicit mask.
        mask, is_causal = None, False
        if self.causal and S == T and padding_mask is None:
            is_causal = True
        elif self.causal and T > 1:
            mask = causal_mask(T, S, x.device, S - T)  # (T, S), new queries aligned to the end of the keys
        if padding_mask is not None:
            if kv_cache is not None:
                raise ValueError("padding_mask with a KV cache is not supported")
            keys_ok = padding_mask.view(B, 1, 1, S)  # (B, 1, 1, S)
            mask = keys_ok if mask is None else mask & keys_ok  # (B, 1, T, S)

        dropout_p = self.dropout if self.training else 0.0
        attend = scaled_dot_product_attention if self.backend == "manual" else F.scaled_dot_product_attention
        y = attend(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C), heads side by side again
        return self.resid_dropout(self.proj(y))  # (B, T, C)
