"""How much of the machine a training run uses: model FLOPs utilisation (MFU; Chowdhery et al. 2022, PaLM, appendix B).

MFU = (tokens per second x the FLOPs the model needs per token) / the device's peak FLOPs per second. It counts only
the arithmetic the model itself requires, so recomputation (activation checkpointing), padding or a slow kernel lower
it; it is the figure to compare runs, machines and code changes by, and 100% is out of reach (PaLM's 540B model
reached 46.2%).

FLOPs per token, forward and backward (PaLM appendix B):

    6N + 12 L T C        N   the parameters every token is multiplied by: each weight matrix 2N FLOPs forward
                             (a multiply and an add per weight) and 4N backward (gradients of inputs and weights);
                             PaLM's N leaves out the embeddings, which are looked up, not multiplied. The output
                             layer *is* multiplied, so it counts, also when it is the token embedding (tied, once);
                             the position table does not (nanoGPT counts the same way).
                         12LTC  attention's two products per layer, q k^T and (attention) v: 2 x 2TC FLOPs forward
                             per token over a context of T, times 3 with the backward (PaLM's 12LHQT, H x Q = C).

The peak: a datasheet figure for common GPUs (dense, without 2:4 sparsity), in the precision the run computes in;
on a CPU it is measured: one square matmul, timed in that precision at the start of every run, the fastest figure of
any run kept in the cache (device.best_measurement: a busy machine can only understate a peak, so a probe taken while
other jobs ran is replaced by the next quieter one). `--peak_flops` overrides both. Under torchrun the peak is per
device, so MFU divides by the process count.
Read next: atomic.py.
"""
import re
import time

import torch

from device import best_measurement, cpu_name

PROBE_SIZE = 1024  # the probe's square matmul: (n x n) @ (n x n) = 2 n^3 FLOPs, ~2 GFLOPs, tens of ms on a laptop core

# Peak dense tensor-core FLOP/s (bfloat16 = float16 unless said), and float32 without TF32 (torch's default for
# matmuls), from NVIDIA's datasheets and architecture whitepapers. A name matches as a whole word of torch's device
# name ("L4" is not "L40S"); the first match wins, so "H100 PCIe" comes before "H100". None: the GPU lacks that type.
GPU_PEAKS = [  # (name in torch.cuda.get_device_name(), bfloat16, float16, float32) in TFLOP/s
    ("H100 PCIe", 756, 756, 51),         # H100 datasheet: 1,513 BF16 "with sparsity", halved
    ("H100", 989, 989, 67),              # H100 SXM5 datasheet: 1,979 with sparsity, halved
    ("A100", 312, 312, 19.5),            # A100 datasheet (SXM and PCIe alike)
    ("A10G", 70, 70, 35),                # AWS's A10 variant: no NVIDIA datasheet; the figures usually listed
    ("A10", 125, 125, 31.2),             # A10 datasheet
    ("L4", 121, 121, 30.3),              # L4 datasheet: 242 with sparsity, halved
    ("V100-PCIE", None, 112, 14),        # V100 datasheet, PCIe
    ("V100", None, 125, 15.7),           # V100 datasheet, SXM2
    ("T4", None, 65, 8.1),               # T4 datasheet (mixed FP16/FP32)
    ("RTX 3090", 71, 71, 35.6),          # GA102 whitepaper, tensor FP16/BF16 with FP32 accumulate (autocast's)
    ("RTX 4090", 165.2, 165.2, 82.6),    # Ada whitepaper, the same
]
PRECISIONS = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}  # the column of GPU_PEAKS


def matmul_parameters(model) -> int:
    """N of PaLM's 6N: the parameters a token is multiplied by. The embedding tables are looked up, not multiplied,
    so they are left out; the output layer's matrix is multiplied, so it counts, also when it is the token embedding
    (tied: then it counts once)."""
    n = model.num_parameters(include_embeddings=False)  # every parameter but the token and position tables
    return n + model.lm_head.weight.numel() if model.lm_head.weight is model.tok_emb.weight else n


def flops_per_token(model) -> int:
    """Training FLOPs per token, forward + backward, at the full context: 6N + 12 L T C (PaLM appendix B)."""
    c = model.config
    return 6 * matmul_parameters(model) + 12 * c.num_of_layers * c.block_size * c.embedding_dim


def gpu_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak of a GPU named like torch names it ("NVIDIA A100-SXM4-40GB"), or None if not in the table."""
    for row in GPU_PEAKS:
        if re.search(rf"\b{re.escape(row[0])}\b", device_name):
            tflops = row[PRECISIONS[dtype]]
            return None if tflops is None else tflops * 1e12
    return None


def time_matmul(dtype: torch.dtype, n: int = PROBE_SIZE, repeats: int = 3) -> float:
    """FLOP/s of one (n x n) @ (n x n) product on this CPU in `dtype`, the best of `repeats` after a warm-up."""
    generator = torch.Generator().manual_seed(0)  # the training run's random numbers stay untouched
    a = torch.randn(n, n, generator=generator).to(dtype)  # (n, n)
    b = torch.randn(n, n, generator=generator).to(dtype)  # (n, n)
    best = float("inf")
    for i in range(repeats + 1):
        started = time.perf_counter()
        a @ b
        if i:  # the first call allocates and picks the kernel
            best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


def peak_flops(device: torch.device, dtype: torch.dtype, override: float | None = None) -> tuple[float | None, str]:
    """One device's peak FLOP/s in `dtype` and where the figure comes from (for the start summary); None if unknown."""
    if override:
        return override, "--peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, dtype)
        return peak, (f"{name} datasheet, dense" if peak else f"{name} is not in flops.GPU_PEAKS; give --peak_flops")
    if device.type == "cpu":
        key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {dtype} | n={PROBE_SIZE}"
        peak = best_measurement("peak_flops.json", key, lambda: time_matmul(dtype, repeats=1))
        return peak, f"a {PROBE_SIZE}x{PROBE_SIZE} matmul on this CPU (the fastest of every run's probe)"
    return None, f"no peak known for {device.type}; give --peak_flops"


class Speedometer:
    """Tokens per second and MFU over the steps since the last reading (an evaluation's time is left out: restart()).

    Reading the clock means nothing while the GPU still has queued work: read() after something has waited for it
    (the loss's .item() at a log interval)."""

    def __init__(self, flops_per_token: int, peak: float | None, devices: int = 1, clock=time.perf_counter):
        self.flops_per_token, self.peak, self.devices, self.clock = flops_per_token, peak, devices, clock
        self.restart()

    def restart(self):
        self.started, self.tokens = self.clock(), 0

    def count(self, tokens: int):
        self.tokens += tokens

    def read(self) -> tuple[float, float | None]:
        """(tokens/s, MFU as a fraction, or None without a peak) since the last read or restart; then restarts."""
        now = self.clock()
        tokens_per_sec = self.tokens / max(now - self.started, 1e-9)
        self.started, self.tokens = now, 0
        if not self.peak:
            return tokens_per_sec, None
        return tokens_per_sec, tokens_per_sec * self.flops_per_token / (self.peak * self.devices)
