"""The GPT: a stack of transformer blocks that predicts the next token (GPT-2, Radford et al. 2019).

    tokens -> token embedding + position embedding -> num_of_layers x Block -> LayerNorm -> logits over the vocabulary

Each Block is pre-LayerNorm (GPT-2 section 2.3 moved LayerNorm to the input of each sub-block):

    x = x + attention(LayerNorm(x))     # tokens look at earlier tokens (attention.py)
    x = x + mlp(LayerNorm(x))           # each token thinks alone: Linear(C, 4C), GELU, Linear(4C, C)

The output layer shares its weights with the token embedding (weight tying, Press & Wolf 2017, as GPT-2 does).
Initialisation follows GPT-2: every Linear and Embedding weight ~ N(0, 0.02), biases 0, LayerNorm gains 1, and the
projections that write into the residual stream drawn with std 0.02/sqrt(2 * num_of_layers) so the stream's variance
does not grow with depth (GPT-2 section 2.3).

The modern recipe (nanochat, the modded-nanoGPT speedrun) changes a few of these choices; each is a ModelConfig option
whose default is GPT-2's, so this file reads as GPT-2 first:

    position=rope        no position table: attention turns q and k by their positions (attention.Rotary)
    norm=rms             RMSNorm instead of LayerNorm (Zhang & Sennrich 2019)
    qk_norm              each head's q and k scaled to unit RMS before the scores (attention.py)
    activation=relu2     relu(x)^2 instead of GELU in the MLP (So et al. 2021, "Primer", section 4)
    tie_embeddings=false the output layer gets its own (V, C) matrix
    zero_init            the residual projections (and an untied output layer) start at zero

Shape letters (the README's alphabet): B batch, T time (tokens), C embedding_dim, V vocab_size.
Read next: tokenizer/ (its README gives the order), how text becomes the ids this model reads.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from attention import KVCache, MultiHeadAttention
from config import ModelConfig


class MLP(nn.Module):
    """The position-wise feed-forward network (Vaswani et al. section 3.3) with GPT's GELU and 4x width."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C = config.embedding_dim
        self.fc = nn.Linear(C, 4 * C, bias=config.bias)
        self.proj = nn.Linear(4 * C, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        # GELU(x) = x * Phi(x), Phi the standard normal CDF (Hendrycks & Gimpel 2016). Computing Phi needs erf; the
        # paper's cheaper tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), is what GPT-2's code
        # used and its weights were trained with. The two differ by at most 4.7e-4 (near x = 2.7): our own models use
        # the exact one, an imported GPT-2 the approximation (activation="gelu_tanh") so its logits match the original.
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"
        # ReLU squared (So et al. 2021, "Primer", section 4: found by architecture search, cheaper than GELU and
        # better at equal compute): zero for x < 0 like ReLU, but smooth at 0 and growing like x^2 beyond.
        self.relu2 = config.activation == "relu2"

    def forward(self, x):
        h = self.fc(x)  # (B, T, 4C)
        h = ReLUSquared.apply(h) if self.relu2 else F.gelu(h, approximate=self.approximate)  # (B, T, 4C)
        return self.dropout(self.proj(h))  # (B, T, C)


class ReLUSquared(torch.autograd.Function):
    """relu(x)^2, whose derivative 2 relu(x) comes from the relu(x) kept by the forward pass in one pass over memory.
    Autograd's own chain for F.relu(x).square() (square's backward, then relu's) gives the same numbers in about
    twice the time on a CPU; tests/test_modern.py checks that the two agree exactly."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return r.mul(grad).mul_(2)


def make_norm(config: ModelConfig) -> nn.Module:
    """LayerNorm (Ba et al. 2016): subtract the mean, divide by the standard deviation, then a gain and a bias.
    RMSNorm (Zhang & Sennrich 2019) keeps only the division, by the root mean square, and the gain: one statistic
    instead of two, and the paper finds the re-centring is not what makes normalisation work."""
    C = config.embedding_dim
    if config.norm == "rms":
        return nn.RMSNorm(C, eps=config.layer_norm_eps)
    return nn.LayerNorm(C, eps=config.layer_norm_eps, bias=config.bias)


class Block(nn.Module):
    """One transformer block: attention then MLP, each on a LayerNorm'd input and added back to the stream."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = MultiHeadAttention(config.embedding_dim, config.num_of_heads, config.dropout, config.bias,
                                       causal=True, backend=config.attention_backend, qk_norm=config.qk_norm,
                                       rotary_max_len=config.block_size if config.position == "rope" else 0)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, padding_mask=None, kv_cache=None):
        x = x + self.attn(self.ln_1(x), padding_mask, kv_cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set before building a GPT")
        self.config = config
        V, C = config.vocab_size, config.embedding_dim
        self.tok_emb = nn.Embedding(V, C)
        # Learned absolute positions, as in GPT-1 and GPT-2; with rotary embeddings attention handles positions.
        self.pos_emb = nn.Embedding(config.block_size, C) if config.position == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_of_layers))
        self.ln_f = make_norm(config)  # GPT-2 adds it after the last block
        self.lm_head = nn.Linear(C, V, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # weight tying: one (V, C) matrix reads tokens in and out
        self.activation_checkpointing = False  # training.py may turn it on: memory for compute (Chen et al. 2016)

        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.num_of_layers)  # GPT-2 section 2.3: two residual adds per block
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=residual_std)
                if config.zero_init:  # each block starts as the identity; the gradient reaches the weight anyway
                    nn.init.zeros_(proj.weight)
        if config.zero_init and not config.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)  # every token equally likely at the start: loss = ln V exactly

    @classmethod
    def from_pretrained(cls, path: str, **settings) -> "GPT":
        """OpenAI's GPT-2 from a Hugging Face directory, or a hub name such as "gpt2" (gpt2.py maps the names).

        settings: block_size (crops the position table), dropout, attention_backend. The model is in eval mode."""
        import gpt2  # gpt2.py builds on this file

        return gpt2.load_pretrained(path, **settings)[0]

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameters, counting the tied matrix once. Without embeddings: what scales with depth (Kaplan et al.)."""
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return n

    def embed(self, idx, start: int = 0):
        """idx: (B, T) token ids at positions start.. -> (B, T, C): token embeddings, plus learned positions (GPT-2)."""
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + idx.size(1), device=idx.device))  # (B, T, C)
        return x

    def hidden_states(self, idx, padding_mask=None, kv_caches=None):
        """idx: (B, T) token ids -> (B, T, C), the final LayerNorm'd states (the classifier head reads these)."""
        B, T = idx.shape
        start = kv_caches[0].length if kv_caches else 0  # cached tokens come first
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size={self.config.block_size}")
        x = self.dropout(self.embed(idx, start))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and self.training and not kv_caches:  # keep x only; backward reruns block
                x = checkpoint(block, x, padding_mask, use_reentrant=False)  # (B, T, C), same dropout masks again
            else:
                x = block(x, padding_mask, kv_caches[i] if kv_caches else None)  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def forward(self, idx, targets=None, padding_mask=None, kv_caches=None):
        """idx: (B, T) -> (logits (B, T, V), loss or None). targets: (B, T) next-token ids, -1 where ignored."""
        logits = self.lm_head(self.hidden_states(idx, padding_mask, kv_caches))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx):
        """idx: (B, T) -> (num_of_layers, B, H, T, T): every block's attention weights for this input, as the forward
        computes them in eval mode (each from its block's LayerNorm'd input). The forward is untouched; plot.py draws
        these."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size={self.config.block_size}")
        x = self.embed(idx)  # (B, T, C), no dropout: looking
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_weights(block.ln_1(x)))  # (B, H, T, T)
            x = block(x)  # (B, T, C)
        return torch.stack(maps)  # (num_of_layers, B, H, T, T)

    def configure_optimizer(self, learning_rate: float, weight_decay: float, betas=(0.9, 0.99), params=None):
        """AdamW with decay on weight matrices only (GPT-1 section 4.1: L2 on "all non bias or gain weights").

        Matrices (Linear weights, embeddings) decay; biases and LayerNorm gains, which are vectors, do not.
        params: the parameters to train (all by default; muon.py gives AdamW the ones Muon does not train).
        """
        params = [p for p in (self.parameters() if params is None else params) if p.requires_grad]  # tied: once
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # fused: one kernel updates every parameter in a single pass over it, on the CPU as on CUDA (GPT-2's 4 x 128
        # model on an AMD EPYC: 1.3 ms an update against 6.0 for foreach's batched ops, ~1.5% of the training step).
        # foreach, a few batched ops per update, is the fallback for the devices fused does not cover.
        fused = all(p.device.type in ("cpu", "cuda", "mps") and p.is_floating_point() for p in params)
        kernel = {"fused": True} if fused else {"foreach": True}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **kernel)

    def new_kv_caches(self, batch_size: int, device=None, dtype=None) -> list[KVCache]:
        """One empty KVCache per block, each holding up to block_size positions."""
        c = self.config
        device = device or self.tok_emb.weight.device
        dtype = dtype or self.tok_emb.weight.dtype
        return [KVCache(batch_size, c.num_of_heads, c.block_size, c.embedding_dim // c.num_of_heads, device, dtype)
                for _ in range(c.num_of_layers)]

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None,
                 kv_cache: bool = True, return_probs: bool = False, top_alternatives: int = 0):
        """Extend idx (B, T) by max_new_tokens tokens -> (B, T + max_new_tokens) ids (sampling.py does the work).

        greedy (or temperature=0) takes the argmax; otherwise tokens are sampled from softmax(logits / temperature)
        cut to top_k and top_p, drawing from `generator` (torch's global RNG when None). kv_cache=False re-runs the
        whole context at every step (the reference). With return_probs, returns a sampling.Generation that also
        holds each new token's probability under the model and, with top_alternatives=K (which implies
        return_probs), the K most probable tokens at each step. Past block_size, the last half of the context
        becomes the new prefix (see sampling.py).
        """
        import sampling  # the sampler is its own chapter, and sampling.py needs nothing from this file

        return sampling.generate(self, idx, max_new_tokens, return_probs=return_probs,
                                 top_alternatives=top_alternatives, temperature=temperature, top_k=top_k,
                                 top_p=top_p, greedy=greedy, generator=generator, kv_cache=kv_cache)
