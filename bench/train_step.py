"""Tokens/s of our training step against a plain PyTorch GPT-2 step (nanoGPT's model and loop), in the same run.

    python bench/train_step.py                        # the default model, float32 and bf16 autocast
    python bench/train_step.py --nanogpt ~/nanoGPT    # also time a real nanoGPT checkout's model.py side by side
    python bench/train_step.py --layers 6 --width 384 --heads 6 --context 256 --batch 16

The plain step is what nanoGPT's train.py does: nn.Linear / nn.LayerNorm blocks, torch's fused
scaled_dot_product_attention, tied embeddings, AdamW with decay on matrices, clipping at 1.0, one micro-batch.
Both models start from the SAME weights (ours copied into theirs) and see the same batches of the built-in corpus, so
their losses must agree to float noise; the script checks that before it times anything. Timing alternates the
contenders round by round (a busy neighbour slows all of them alike) and reports each one's best round.
Absolute tokens/s on a shared machine are noise; the ratios are the figures.

A third line times the step's Linear-layer matmuls alone, the same shapes back to back: the bound on what any step
of this model, ours or another, can gain over the plain one on your machine (see MatmulFloor).
"""
import argparse
import contextlib
import importlib.util
import math
import os
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import data  # noqa: E402
from config import ModelConfig  # noqa: E402
from gpt import GPT  # noqa: E402
from tokenizer import train_tokenizer  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------------
# The plain reference: GPT-2 as nanoGPT writes it, in as few lines as it takes


class PlainBlock(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))  # (B, T, C)


class PlainGPT(nn.Module):
    def __init__(self, V, T, C, H, L):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(PlainBlock(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def plain_from_ours(ours: GPT) -> PlainGPT:
    c = ours.config
    plain = PlainGPT(c.vocab_size, c.block_size, c.embedding_dim, c.num_of_heads, c.num_of_layers)
    copy_weights(ours, plain, {"tok_emb": "wte", "pos_emb": "wpe", "blocks": "h", "attn.qkv": "c_attn",
                               "attn.proj": "c_proj", "mlp.fc": "c_fc", "mlp.proj": "mlp_proj"})
    return plain


def nanogpt_from_ours(ours: GPT, path: str):
    """nanoGPT's own model.py (from a checkout at `path`), with our weights."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", os.path.join(path, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = ours.config
    theirs = module.GPT(module.GPTConfig(block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.num_of_layers,
                                         n_head=c.num_of_heads, n_embd=c.embedding_dim, dropout=0.0, bias=True))
    copy_weights(ours, theirs, {"tok_emb": "transformer.wte", "pos_emb": "transformer.wpe",
                                "blocks": "transformer.h", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
                                "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj", "ln_f": "transformer.ln_f"})
    return theirs


def copy_weights(ours, theirs, renames):
    target = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        for old, new in renames.items():
            name = name.replace(old, new)
        if name in target:
            target[name].copy_(tensor)
    theirs.load_state_dict(target)


# ---------------------------------------------------------------------------------------------------------------------
# Steps and timing


def adamw(model, lr=4e-3):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.99))


class Contender:
    """A model, its optimizer and one training step, plain PyTorch style."""

    def __init__(self, name, model, optimizer, dtype):
        self.name, self.model, self.optimizer = name, model, optimizer
        self.ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step(self, x, y) -> float:
        with self.ctx:
            _, loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class MatmulFloor:
    """The step's dense products and nothing else: every Linear layer's (the tied output layer's too) forward product
    and backward's two (the input's gradient, the weight's), on tensors of the step's shapes. Any step that computes
    this model's gradients does these and more (attention's products, norms, GELU, the optimizer), so the plain
    step's time over this one's is the most any engine could gain over it on this machine at this precision."""

    name = "the Linear layers' matmuls alone"

    def __init__(self, cfg: ModelConfig, batch: int, dtype):
        M, C = batch * cfg.block_size, cfg.embedding_dim  # M: the tokens of a step, every one multiplied
        shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * cfg.num_of_layers + [(C, cfg.vocab_size)]  # (in, out)
        self.tensors = [(torch.randn(M, i), torch.randn(o, i), torch.randn(M, o)) for i, o in shapes]
        self.ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step(self, x, y):
        with self.ctx:
            for inputs, weight, grad_out in self.tensors:  # (M, in), (out, in), (M, out)
                inputs @ weight.t(), grad_out @ weight, grad_out.t() @ inputs  # forward, grad input, grad weight


def contenders(cfg: ModelConfig, dtype, nanogpt_path):
    torch.manual_seed(0)
    ours = GPT(cfg)
    plain, theirs = plain_from_ours(ours), nanogpt_from_ours(ours, nanogpt_path) if nanogpt_path else None
    result = [Contender("plain PyTorch (nanoGPT-style)", plain, adamw(plain), dtype)]
    if theirs is not None:
        opt = theirs.configure_optimizers(0.1, 4e-3, (0.9, 0.99), "cpu")
        result.append(Contender("nanoGPT model.py", theirs, opt, dtype))
    result.append(Contender("scratchgpt", ours, ours.configure_optimizer(4e-3, 0.1, (0.9, 0.99)), dtype))
    return result


def batches(ids, batch, block_size, seed, steps):
    """The training run's batches (data.get_batch), laid out contiguously as nanoGPT's get_batch makes them."""
    return [tuple(t.contiguous() for t in data.get_batch(ids, batch, block_size, seed, s)) for s in range(steps)]


def check_losses(cfg, ids, batch, nanogpt_path, steps=10):
    """Same weights, same batches: the losses must agree to float noise (float32)."""
    runs = contenders(cfg, torch.float32, nanogpt_path)
    fixed = batches(ids, batch, cfg.block_size, 0, steps)
    curves = [[c.step(x, y) for x, y in fixed] for c in runs]
    gap = max(abs(a - b) for curve in curves[:-1] for a, b in zip(curve, curves[-1]))
    print(f"losses over {steps} steps from the same weights: ours {curves[-1][0]:.4f} -> {curves[-1][-1]:.4f}; "
          f"largest gap to the others {gap:.1e}")
    if gap > 1e-3:
        sys.exit(f"the contenders disagree by {gap:.1e}: they do not train the same model")


def time_steps(cfg, ids, batch, dtype, nanogpt_path, rounds, steps):
    runs = contenders(cfg, dtype, nanogpt_path) + [MatmulFloor(cfg, batch, dtype)]
    fixed = batches(ids, batch, cfg.block_size, 1, steps)
    for c in runs:  # warm-up
        for x, y in fixed[:2]:
            c.step(x, y)
    best = {c.name: math.inf for c in runs}
    for _ in range(rounds):
        for c in runs:
            started = time.perf_counter()
            for x, y in fixed:
                c.step(x, y)
            best[c.name] = min(best[c.name], (time.perf_counter() - started) / steps)
    return {name: batch * cfg.block_size / seconds for name, seconds in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backend", default="manual", choices=("manual", "sdpa"))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--nanogpt", metavar="PATH", help="a nanoGPT checkout: time its model.py too")
    args = parser.parse_args()

    tokenizer = train_tokenizer("char", data.builtin_corpus_path(), progress=False)
    tokens = data.load_tokens(data.builtin_corpus_path(), tokenizer, 0.1, args.context, quiet=True)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=args.context, embedding_dim=args.width,
                      num_of_layers=args.layers, num_of_heads=args.heads, attention_backend=args.backend)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads ({torch.backends.cpu.get_cpu_capability()}); model {args.layers} x {args.width}, "
          f"{args.heads} heads, context {args.context}, batch {args.batch}, {args.backend} attention")
    check_losses(cfg, tokens.train, args.batch, args.nanogpt)
    for name in args.dtypes.split(","):
        speeds = time_steps(cfg, tokens.train, args.batch, getattr(torch, name), args.nanogpt, args.rounds,
                            args.steps)
        ours, floor = speeds.pop("scratchgpt"), speeds.pop(MatmulFloor.name)
        print(f"\n{name}: scratchgpt {ours:,.0f} tokens/s")
        for other, speed in speeds.items():
            print(f"  {other}: {speed:,.0f} tokens/s -> ours / theirs = {ours / speed:.2f}x")
        plain = speeds["plain PyTorch (nanoGPT-style)"]
        print(f"  {MatmulFloor.name}: {floor:,.0f} tokens/s -> no step of this model can beat the plain one by more "
              f"than {floor / plain:.2f}x here; ours runs at {ours / floor:.0%} of the matmuls' speed")


if __name__ == "__main__":
    main()
