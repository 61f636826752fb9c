"""Benchmark (not a test): the hand-written attention of attention.py against torch's fused SDPA, in the same run.

    python bench/attention.py [--repeats 7] [--shapes 12x4x64x32 ...] [--steps 10] [--no-model] [--threads N]
                              [--long 256 1024 4096 8192] [--blocks]

1. Attention alone at training shapes (B, H, T, D), causal, float32: the time of the forward (with autograd on, as in
   training) and of forward + backward, ours / torch's, and the largest difference between the two (outputs and
   gradients of q, k, v).
2. One training step of gpt.GPT (forward, backward, AdamW) at the project's default shape (ModelConfig, TrainConfig
   batch_size, the char tokenizer's 80 for the built-in Shakespeare) with attention_backend="manual" against "sdpa".
3. Long contexts (--long): flash_attention.py and the manual path against SDPA, causal, forward + backward, at
   (B, 4, T, 64) with B * T = 8192 tokens: the time ratio, and the extra memory of one forward + backward, measured
   as the peak RSS of a fresh subprocess minus its RSS once the inputs exist (what attention itself allocates).
4. --blocks: flash_attention's time / SDPA's for a grid of block sizes at T = 1024 and 4096, to pick the defaults.

The two sides run alternately, after a warm-up, and the median of each is kept: on a shared machine (check `top`) a
noisy neighbour then slows both sides alike. The ratio of the best (fastest) runs is printed too: a busy neighbour
inflates medians, rarely the best run. Rerun when the two ratios disagree.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import attention  # noqa: E402

TRAINING_SHAPES = ["12x4x64x32", "16x4x256x64", "64x6x256x64", "8x12x1024x64"]  # B x H x T x D
LONG_CONTEXTS = [256, 1024, 4096, 8192]
LONG_TOKENS, LONG_HEADS, LONG_HEAD_SIZE = 8192, 4, 64  # B = 8192 // T sequences of T tokens, 4 heads of 64
BLOCK_GRID = [(64, 256), (64, 512), (128, 256), (128, 512), (128, 1024), (256, 256), (256, 512), (256, 1024)]
BACKENDS = {"manual": attention.scaled_dot_product_attention, "flash": attention.flash_attention,
            "sdpa": F.scaled_dot_product_attention}
CHAR_VOCAB_SIZE = 80  # the char tokenizer: 80 for the built-in Shakespeare


def race(ours, theirs, repeats: int, warmup: int = 2):
    """Seconds of `ours` and of `theirs`, run alternately (ours first on even rounds, theirs on odd): (median, best)
    of each."""
    for _ in range(warmup):
        ours(), theirs()
    times = {ours: [], theirs: []}
    for i in range(repeats):
        for fn in (ours, theirs) if i % 2 == 0 else (theirs, ours):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return [(statistics.median(times[fn]), min(times[fn])) for fn in (ours, theirs)]


def bench_attention(shape: str, repeats: int) -> dict:
    B, H, T, D = (int(n) for n in shape.split("x"))
    g = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(B, H, T, D, generator=g).requires_grad_() for _ in range(3)]  # (B, H, T, D)
    grad = torch.randn(B, H, T, D, generator=g)  # (B, H, T, D), dLoss/dOutput

    def forward(fn):
        return lambda: fn(q, k, v, is_causal=True)

    def forward_backward(fn):
        return lambda: torch.autograd.grad(fn(q, k, v, is_causal=True), (q, k, v), grad)

    ours, theirs = attention.scaled_dot_product_attention, F.scaled_dot_product_attention
    errors = [(a - b).abs().max().item() for a, b in zip([forward(ours)(), *forward_backward(ours)()],
                                                         [forward(theirs)(), *forward_backward(theirs)()])]
    fwd = race(forward(ours), forward(theirs), repeats)
    fwd_bwd = race(forward_backward(ours), forward_backward(theirs), repeats)
    return dict(shape=(B, H, T, D), fwd=fwd, fwd_bwd=fwd_bwd, out_error=errors[0], grad_error=max(errors[1:]))


def long_inputs(T: int):
    """q, k, v (B, 4, T, 64) needing gradients and an upstream gradient, B * T = LONG_TOKENS."""
    g = torch.Generator().manual_seed(0)
    shape = (max(1, LONG_TOKENS // T), LONG_HEADS, T, LONG_HEAD_SIZE)  # (B, H, T, D)
    q, k, v = [torch.randn(shape, generator=g).requires_grad_() for _ in range(3)]  # (B, H, T, D)
    return q, k, v, torch.randn(shape, generator=g)  # (B, H, T, D), dLoss/dOutput


def one_call(fn, q, k, v, grad, **kwargs):
    return lambda: torch.autograd.grad(fn(q, k, v, is_causal=True, **kwargs), (q, k, v), grad)


def memory_child(backend: str, T: int):
    """Run in a fresh process: print the bytes one forward + backward adds to the peak RSS (Linux only)."""
    q, k, v, grad = long_inputs(T)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS: what importing torch peaked at no longer counts
    before = _status_kib("VmRSS")
    one_call(BACKENDS[backend], q, k, v, grad)()
    print((_status_kib("VmHWM") - before) * 1024)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def extra_memory(backend: str, T: int) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", backend, str(T), "--threads",
           str(torch.get_num_threads())]
    return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def bench_long(T: int, repeats: int) -> dict:
    q, k, v, grad = long_inputs(T)
    runs = {name: one_call(fn, q, k, v, grad) for name, fn in BACKENDS.items()}
    flash, sdpa = race(runs["flash"], runs["sdpa"], repeats, warmup=1)  # (median, best) each
    manual, sdpa2 = race(runs["manual"], runs["sdpa"], repeats, warmup=1)
    sdpa = (min(sdpa[0], sdpa2[0]), min(sdpa[1], sdpa2[1]))  # SDPA ran in both races
    return dict(shape=tuple(q.shape), flash=flash, manual=manual, sdpa=sdpa,
                memory={name: extra_memory(name, T) for name in BACKENDS})


def bench_training_step(steps: int) -> tuple[float, float, str]:
    from config import ModelConfig, TrainConfig
    from gpt import GPT

    train = TrainConfig()
    models, steppers = {}, {}
    for backend in ("manual", "sdpa"):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=CHAR_VOCAB_SIZE, attention_backend=backend)
        model = GPT(cfg)
        optimizer = model.configure_optimizer(train.learning_rate, train.weight_decay, (train.beta1, train.beta2))
        g = torch.Generator().manual_seed(1)
        batch = torch.randint(CHAR_VOCAB_SIZE, (train.batch_size, cfg.block_size + 1), generator=g)  # (B, T + 1)
        idx, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each, targets shifted by one

        def step(model=model, optimizer=optimizer, idx=idx, targets=targets):
            logits, loss = model(idx, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        models[backend], steppers[backend] = cfg, step
    cfg = models["manual"]
    shape = (f"B={train.batch_size} T={cfg.block_size} C={cfg.embedding_dim} layers={cfg.num_of_layers} "
             f"heads={cfg.num_of_heads} V={CHAR_VOCAB_SIZE}")
    manual, sdpa = race(steppers["manual"], steppers["sdpa"], steps, warmup=3)
    return manual, sdpa, shape


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=TRAINING_SHAPES, help="attention shapes, BxHxTxD (none: skip)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per measurement (median kept)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per backend (median kept)")
    parser.add_argument("--no-model", action="store_true", help="skip the training-step comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--long", nargs="*", type=int, default=LONG_CONTEXTS, help="long contexts T (none: skip)")
    parser.add_argument("--blocks", action="store_true", help="time flash_attention's block sizes")
    parser.add_argument("--memory-child", nargs=2, metavar=("BACKEND", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child[0], int(args.memory_child[1]))
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f} on "
          f"{os.cpu_count()} cores{'  (busy machine: expect noise)' if load > 0.5 else ''}")

    print("\nattention alone, causal, float32; ms are medians; ratio = ours / torch SDPA (lower is better), best = the"
          " same ratio for the fastest runs")
    print(f"{'B, H, T, D':>20} | {'fwd ours':>9} {'sdpa':>8} {'ratio':>6} {'best':>6} | {'fwd+bwd ours':>12} "
          f"{'sdpa':>8} {'ratio':>6} {'best':>6} | max |ours - sdpa| out, grads")
    for shape in args.shapes:
        repeats = args.repeats if int(shape.split("x")[2]) < 1024 else max(3, args.repeats // 2)  # the big one is slow
        r = bench_attention(shape, repeats)
        ((f_ours, f_ours_best), (f_sdpa, f_sdpa_best)), ((b_ours, b_ours_best), (b_sdpa, b_sdpa_best)) = \
            r["fwd"], r["fwd_bwd"]
        print(f"{str(r['shape']):>20} | {f_ours * 1e3:9.2f} {f_sdpa * 1e3:8.2f} {f_ours / f_sdpa:5.2f}x "
              f"{f_ours_best / f_sdpa_best:5.2f}x | {b_ours * 1e3:12.2f} {b_sdpa * 1e3:8.2f} {b_ours / b_sdpa:5.2f}x "
              f"{b_ours_best / b_sdpa_best:5.2f}x | {r['out_error']:.1e}, {r['grad_error']:.1e}", flush=True)

    if args.long:
        print(f"\nlong contexts, causal, float32, forward + backward, {LONG_TOKENS} tokens per call; time ratios "
              "against torch SDPA (median, best run); extra memory: the peak RSS one call adds, in a fresh process")
        print(f"{'B, H, T, D':>20} | {'sdpa ms':>8} {'flash':>6} {'best':>6} {'manual':>7} {'best':>6} | "
              f"{'MiB: sdpa':>9} {'flash':>7} {'manual':>7} | flash / manual")
        for T in args.long:
            r = bench_long(T, max(2, args.repeats // (1 if T < 4096 else 3)))
            (sdpa, sdpa_best), mem = r["sdpa"], {name: r["memory"][name] / 2 ** 20 for name in BACKENDS}
            print(f"{str(r['shape']):>20} | {sdpa * 1e3:8.0f} {r['flash'][0] / sdpa:5.2f}x "
                  f"{r['flash'][1] / sdpa_best:5.2f}x {r['manual'][0] / sdpa:6.2f}x "
                  f"{r['manual'][1] / sdpa_best:5.2f}x | {mem['sdpa']:9.1f} "
                  f"{mem['flash']:7.1f} {mem['manual']:7.1f} | {mem['flash'] / mem['manual']:.3f}", flush=True)

    if args.blocks:
        print("\nflash_attention block sizes (block_q x block_k): forward + backward time / SDPA's, best runs")
        for T in (1024, 4096):
            q, k, v, grad = long_inputs(T)
            sdpa = one_call(F.scaled_dot_product_attention, q, k, v, grad)
            cells = []
            for bq, bk in BLOCK_GRID:
                flash = one_call(attention.flash_attention, q, k, v, grad, block_q=bq, block_k=bk)
                (_, ours), (_, theirs) = race(flash, sdpa, 2, 1)
                cells.append(f"{bq}x{bk} {ours / theirs:.2f}")
            print(f"  T={T} {tuple(q.shape)}: " + ", ".join(cells), flush=True)

    if not args.no_model:
        (manual, manual_best), (sdpa, sdpa_best), shape = bench_training_step(args.steps)
        print(f"\ntraining step (forward + backward + AdamW), gpt.GPT at the defaults: {shape}")
        print(f"  attention_backend=manual {manual * 1e3:.1f} ms, sdpa {sdpa * 1e3:.1f} ms (medians): "
              f"manual / sdpa = {manual / sdpa:.3f} (best runs: {manual_best / sdpa_best:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
