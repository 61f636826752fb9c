"""Benchmark (not a test): generation speed with and without the KV cache, and against Hugging Face's GPT-2.

    python bench/generate.py [--repeats 3] [--threads 1] [--no-profile] [--no-gpt2]

One thread by default: at batch 1 a step is a chain of small matrix-vector products, and on a small machine shared
with other jobs a second thread mostly waits for a busy core (measured here: 10x slower, not faster).

Greedy decoding at batch 1 from a one-token prompt, tokens per second, for two randomly initialised models with the
char vocabulary (80 for the built-in Shakespeare; speed does not depend on the weights):

    default      ModelConfig's defaults: 4 layers, 128 wide, context 128        (500 new tokens)
    6x384        6 layers, 384 wide, 6 heads, context 256, 10.7M parameters     (255 new tokens inside the context,
                                                                                 500 past it)

For each it prints the loop without a cache (the reference: the whole context every step), with the KV cache (the
default), their ratio, and, where `transformers` is installed and the tokens fit in the context, Hugging Face's
GPT2LMHeadModel.generate on the very same weights (use_cache=True, greedy), with a check that its tokens equal ours.
The fast loops keep the best of `repeats` runs, interleaved (the machine may be shared); the no-cache loop runs once.

Then the import path (`--no-gpt2` skips it): a GPT-2 with the 124M model's shape (12 x 768, vocabulary 50257; random
weights, as there is no network) saved by transformers' save_pretrained and read by gpt2.py; our sampler against
transformers' generate on those same weights, 100 new tokens, greedy tokens compared.

Then where a decode step's time goes for the 6x384 model: the step's cost against the cost of just reading the
weights (every Linear layer applied to one vector), and torch's profiler's top operators.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import gpt2  # noqa: E402
import sampling  # noqa: E402
from config import ModelConfig  # noqa: E402
from gpt import GPT  # noqa: E402

VOCAB = 80  # the char vocabulary: 80 for the built-in Shakespeare
MODELS = {
    "default": ModelConfig(vocab_size=VOCAB),
    "6x384": ModelConfig(vocab_size=VOCAB, block_size=256, embedding_dim=384, num_of_layers=6, num_of_heads=6),
}
RUNS = [("default", 500), ("6x384", 255), ("6x384", 500)]
IMPORTED_TOKENS = 100  # new tokens for the imported GPT-2 124M


def hf_gpt2(model: GPT):
    """Hugging Face's GPT2LMHeadModel holding the same weights (gpt2.py maps the names), or None when transformers
    is not installed."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.set_verbosity_error()
    hf = GPT2LMHeadModel(GPT2Config(**gpt2.hf_config(model.config))).eval()
    hf.load_state_dict(gpt2.to_hf_state_dict(model.state_dict(), model.config.num_of_layers), strict=False)
    hf.tie_weights()  # lm_head is wte, as ours
    return hf


def imported_gpt2(folder: str):
    """A GPT-2 124M (12 x 768, vocabulary 50257, random weights: no network here) saved by transformers, then read
    by gpt2.py: (our GPT, transformers' model) on the very same weights, or None without transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    hf.save_pretrained(folder)
    hf.generation_config.eos_token_id = None  # exactly N new tokens, as ours
    hf.generation_config.pad_token_id = 0
    return gpt2.read_model(Path(folder)), hf


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(model: GPT, hf, new_tokens: int, repeats: int, reference: bool = True) -> dict:
    """Best tokens/s of each loop over `repeats` interleaved rounds, and whether the loops agree token for token."""
    idx = torch.zeros(1, 1, dtype=torch.long)
    loops = {"no cache": lambda: sampling.generate(model, idx, new_tokens, greedy=True, kv_cache=False),
             "KV cache": lambda: sampling.generate(model, idx, new_tokens, greedy=True)}
    if not reference:
        del loops["no cache"]
    if hf is not None and 1 + new_tokens <= model.config.block_size:
        mask = torch.ones_like(idx)
        loops["HF"] = lambda: hf.generate(idx, attention_mask=mask, max_new_tokens=new_tokens,
                                          min_new_tokens=new_tokens, do_sample=False, use_cache=True)
    best, outputs = {name: float("inf") for name in loops}, {}
    with torch.inference_mode():
        loops["KV cache"]()  # warm up (first calls allocate)
        for round in range(repeats):
            for name, loop in loops.items():
                if name == "no cache" and round > 0:
                    continue  # one long run is enough, and the slow loop would dominate the benchmark's time
                seconds, outputs[name] = timed(loop)
                best[name] = min(best[name], seconds)
    result = {name: new_tokens / seconds for name, seconds in best.items()}
    result["same"] = all(torch.equal(out, outputs["KV cache"]) for out in outputs.values())
    return result


def weights_floor(model: GPT, steps: int = 50) -> float:
    """Seconds per step of only the matrix-vector products of one decode step: the cost of reading the weights."""
    layers = [m for block in model.blocks for m in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj)]
    x = {m: torch.randn(1, m.in_features) for m in layers}
    h = torch.randn(1, model.config.embedding_dim)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(steps):
                for m in layers:
                    m(x[m])
                model.lm_head(h)
            best = min(best, (time.perf_counter() - start) / steps)
    return best


def decode_step(model: GPT, token, caches):
    """One decode step exactly as sampling.stream takes it: one new position through the cache, then the head."""
    return model.lm_head(model.hidden_states(token, kv_caches=caches)[:, -1])  # (B, V)


def with_backend(model: GPT, backend: str) -> GPT:
    """The same weights with another attention backend."""
    other = GPT(dataclasses.replace(model.config, attention_backend=backend)).eval()
    other.load_state_dict(model.state_dict())
    return other


def step_time(model: GPT, steps: int = 200) -> float:
    """Seconds per decode step, from position 0 to `steps`, best of 5."""
    token = torch.zeros(1, 1, dtype=torch.long)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            caches = model.new_kv_caches(1)
            start = time.perf_counter()
            for _ in range(steps):
                decode_step(model, token, caches)
            best = min(best, (time.perf_counter() - start) / steps)
    return best


def count_operators(model: GPT) -> int:
    """Top-level torch operators one decode step dispatches (what each costs a few microseconds of overhead)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    token = torch.zeros(1, 1, dtype=torch.long)
    with torch.inference_mode():
        caches = model.new_kv_caches(1)
        decode_step(model, token, caches)
        with Count():
            decode_step(model, token, caches)
    return Count.calls


def profile_step(model: GPT, steps: int = 100, top: int = 8) -> list[str]:
    """torch.profiler's top operators by self CPU time over `steps` decode steps, per step."""
    from torch.profiler import ProfilerActivity, profile

    token = torch.zeros(1, 1, dtype=torch.long)
    stderr = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the profiler's C++ side chatters on stderr
    try:
        with torch.inference_mode():
            caches = model.new_kv_caches(1)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    decode_step(model, token, caches)
    finally:
        os.dup2(stderr, 2)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"  torch.profiler, top operators by own time per step (the profiler inflates small ops; "
             f"{total / steps / 1e3:.2f} ms/step in all):"]
    for e in events[:top]:
        lines.append(f"    {e.key:<50} {e.self_cpu_time_total / steps / 1e3:6.3f} ms  "
                     f"{100 * e.self_cpu_time_total / total:4.1f}%  {e.count / steps:4.0f} calls")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the fast loops; the best of each is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice, one per core)")
    parser.add_argument("--no-profile", action="store_true", help="skip the step breakdown")
    parser.add_argument("--no-gpt2", action="store_true", help="skip the imported GPT-2 124M row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, greedy, one-token prompt")
    print(f"{'model':<8} {'params':>7} {'new':>4} {'no cache':>9} {'KV cache':>9} {'ratio':>6} {'HF':>9} "
          f"{'ours/HF':>8}  (tokens/s)")
    models = {}
    for name, new_tokens in RUNS:
        torch.manual_seed(0)
        if name not in models:
            model = GPT(MODELS[name]).eval()
            models[name] = (model, hf_gpt2(model))
        model, hf = models[name]
        r = measure(model, hf, new_tokens, args.repeats)
        hf_text = f"{r['HF']:9.0f} {r['KV cache'] / r['HF']:7.2f}x" if "HF" in r else f"{'-':>9} {'-':>8}"
        inside = "inside" if 1 + new_tokens <= model.config.block_size else "past"
        print(f"{name:<8} {model.num_parameters() / 1e6:6.1f}M {new_tokens:>4} {r['no cache']:9.0f} "
              f"{r['KV cache']:9.0f} {r['KV cache'] / r['no cache']:5.1f}x {hf_text}  "
              f"({inside} the context of {model.config.block_size}; same tokens: {'yes' if r['same'] else 'NO'})")
    if models["6x384"][1] is None:
        print("transformers is not installed: the issue measured HF's GPT-2 generate at ~225 tokens/s for 6x384/255")
    elif not args.no_gpt2:
        with tempfile.TemporaryDirectory() as folder:
            model, hf = imported_gpt2(folder)
        r = measure(model, hf, IMPORTED_TOKENS, args.repeats, reference=False)
        print(f"{'gpt2':<8} {model.num_parameters() / 1e6:6.1f}M {IMPORTED_TOKENS:>4} {'-':>9} {r['KV cache']:9.0f} "
              f"{'-':>6} {r['HF']:9.0f} {r['KV cache'] / r['HF']:7.2f}x  (GPT-2 124M's shape saved by transformers, "
              f"imported by gpt2.py; same tokens: {'yes' if r['same'] else 'NO'})")

    if not args.no_profile:
        model = models["6x384"][0]
        other = "sdpa" if model.config.attention_backend == "manual" else "manual"
        step, floor, general = step_time(model), weights_floor(model), step_time(with_backend(model, other))
        weight_bytes = sum(p.numel() for name, p in model.named_parameters() if name != "pos_emb.weight") * 4
        print(f"\nwhere a 6x384 decode step goes: {step * 1e3:.2f} ms = reading the weights {floor * 1e3:.2f} ms "
              f"({weight_bytes / 1e6:.0f} MB of fp32 at {weight_bytes / floor / 1e9:.0f} GB/s, the Linear layers "
              f"alone) + {max(0.0, step - floor) * 1e3:.2f} ms for everything else ({count_operators(model)} torch "
              f"operators, attention, GELU, LayerNorm, Python)")
        print(f"  the same step with {other} attention instead of {model.config.attention_backend}: "
              f"{general * 1e3:.2f} ms")
        print("\n".join(profile_step(model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
