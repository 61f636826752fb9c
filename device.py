"""Where the model runs (the device) and in what precision (the dtype), decided by measuring, not by guessing.

Mixed precision (Micikevicius et al. 2018) runs the matmuls in a 16-bit type while the weights, the optimizer and the
reductions stay in float32. bfloat16 keeps float32's exponent range, so it needs no loss scaling; float16 does
(torch's GradScaler), which is why float16 is offered on CUDA only, for GPUs without bfloat16 (T4, V100).

Whether bfloat16 pays on a CPU cannot be read from its flags. Measured on the machines this project ran on:
an Intel Xeon with AMX runs the default training step 1.7x faster in bfloat16; an Intel Xeon with AVX-512 BF16 but
no AMX runs it 1.3x slower (torch does not use the instructions it has); an AMD EPYC without AVX-512 emulates
bfloat16 and is slower still. So `--dtype=auto` on a CPU times one block of the model itself, forward and backward,
in float32 and under bfloat16 autocast, and keeps the faster; bfloat16 must win by PROBE_MARGIN to be chosen, so
`auto` is never more than that much slower than the better explicit choice. The verdict is cached per machine,
torch version, thread count and model shape (precision.json under the cache directory), so the probe runs once.

    resolve_device("auto")                      -> cuda, else mps, else cpu
    choose_precision("auto", device, config, B) -> (torch.bfloat16, "bfloat16 autocast: 1.9x float32 here")
    autocast(device, dtype)                     -> the context manager the forward pass runs under

Read next: atomic.py.
"""
import contextlib
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

from atomic import atomic_write_bytes
from config import ModelConfig, UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROBE_MARGIN = 1.05  # bfloat16 must be at least 5% faster than float32 to be chosen
PROBE_TOKENS = 4096  # tokens per probe batch: enough rows for matmuls to run at full speed, few enough to be quick


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a torch device; use auto, cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but this machine has no CUDA GPU; use --device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name} asked for, but MPS is not available; use --device=cpu")
    return device


def check_dtype(name: str, device: torch.device):
    """Refuse a precision this device cannot train in (scripts call it before any work, choose_precision again)."""
    if name == "float16" and device.type != "cuda":
        raise UserError("dtype=float16 needs a CUDA GPU (it trains with loss scaling); on this device use "
                        "bfloat16 or float32")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bfloat16; use --dtype=float16 (with loss scaling) or float32")


def choose_precision(name: str, device: torch.device, model_config: ModelConfig | None = None,
                     batch_size: int = 32) -> tuple[torch.dtype, str]:
    """The dtype to train in and a few words saying why (printed in the start summary).

    name: 'float32', 'bfloat16', 'float16' (taken as asked) or 'auto'. On a CPU, 'auto' measures one block of
    `model_config` at batch_size (see the module docstring); without a config it keeps float32.
    """
    if name != "auto":
        check_dtype(name, device)
        return DTYPES[name], "as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bfloat16 autocast: this GPU supports it"
        return torch.float16, "float16 autocast with loss scaling: this GPU has no bfloat16"
    if device.type != "cpu" or model_config is None:
        return torch.float32, "float32"
    speedup = measured_bf16_speedup(model_config, batch_size)
    if speedup >= PROBE_MARGIN:
        return torch.bfloat16, f"bfloat16 autocast: {speedup:.2f}x float32 here (measured once, cached)"
    return torch.float32, f"float32: bfloat16 autocast is {speedup:.2f}x float32 here (measured once, cached)"


def resolve_dtype(name: str, device: torch.device, model_config: ModelConfig | None = None,
                  batch_size: int = 32) -> torch.dtype:
    """choose_precision without the explanation."""
    return choose_precision(name, device, model_config, batch_size)[0]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision: matmuls in the 16-bit dtype, weights and reductions kept in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------------
# The bfloat16 probe


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_key(model_config: ModelConfig, batch_size: int) -> str:
    """What the verdict depends on: the machine, torch, the threads, and the shapes the probe multiplies."""
    c = model_config
    B = max(1, min(batch_size, PROBE_TOKENS // c.block_size))
    return (f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
            f"C={c.embedding_dim} H={c.num_of_heads} T={c.block_size} B={B} V={c.vocab_size} "
            f"{c.attention_backend}")


def _cache_path(name: str) -> Path:
    from data import cache_dir  # the project's one cache directory

    return cache_dir() / name


def cached_measurement(file_name: str, key: str, measure) -> float:
    """measure() once per key; the answer is kept in file_name (JSON, {key: number}) under the cache directory.

    A missing or damaged file is measured again; a read-only cache only costs a measurement next time."""
    answers = _read_answers(file_name)
    if key in answers:
        return float(answers[key])
    value = measure()
    _write_answer(file_name, answers, key, value)
    return value


def best_measurement(file_name: str, key: str, measure) -> float:
    """For a figure a busy machine can only understate (a peak speed): measure() on every call, keep the highest
    answer so far in file_name, return it. A probe taken while other jobs ran is replaced by a later, quieter one."""
    answers = _read_answers(file_name)
    value = measure()
    if key in answers and float(answers[key]) >= value:
        return float(answers[key])
    _write_answer(file_name, answers, key, value)
    return value


def _read_answers(file_name: str) -> dict:
    try:
        answers = json.loads(_cache_path(file_name).read_text())
        return answers if isinstance(answers, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_answer(file_name: str, answers: dict, key: str, value: float):
    answers[key] = float(f"{value:.4g}")
    try:
        atomic_write_bytes(_cache_path(file_name), json.dumps(answers, indent=1).encode())
    except UserError:
        pass


def measured_bf16_speedup(model_config: ModelConfig, batch_size: int) -> float:
    """float32 time / bfloat16 time of one block's forward + backward (> 1: bfloat16 is faster); cached."""
    return cached_measurement("precision.json", probe_key(model_config, batch_size),
                              lambda: time_bf16_against_float32(model_config, batch_size))


def time_bf16_against_float32(model_config: ModelConfig, batch_size: int, repeats: int = 3) -> float:
    """Time a one-layer GPT of the model's shape, forward + backward, alternating float32 and bfloat16 autocast.

    One layer and the output head cost what one layer's share of a training step costs, so the ratio is the step's
    (the optimizer step and the data are the same in both precisions). Each timing is the best of `repeats`, taken
    in turns so that a busy neighbour slows both alike.
    """
    from gpt import GPT  # here, not at the top: device.py is read before gpt.py

    c = dataclasses.replace(model_config, num_of_layers=1, dropout=0.0)
    B = max(1, min(batch_size, PROBE_TOKENS // c.block_size))
    rng_state = torch.get_rng_state()  # the probe must not move the training run's random numbers
    try:
        torch.manual_seed(0)
        model = GPT(c)
        idx = torch.randint(0, c.vocab_size, (B, c.block_size))  # (B, T)
    finally:
        torch.set_rng_state(rng_state)
    cpu = torch.device("cpu")

    def run(dtype):
        with autocast(cpu, dtype):
            _, loss = model(idx, idx)
        loss.backward()
        model.zero_grad(set_to_none=True)

    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for dtype in best:  # warm-up: first calls allocate and pick kernels
        run(dtype)
    for _ in range(repeats):
        for dtype in best:
            started = time.perf_counter()
            run(dtype)
            best[dtype] = min(best[dtype], time.perf_counter() - started)
    return best[torch.float32] / best[torch.bfloat16]


def describe(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16 autocast'; torch.float32 -> 'float32'."""
    return str(dtype).replace("torch.", "") + (" autocast" if dtype != torch.float32 else "")


if __name__ == "__main__":  # `python device.py`: what auto picks here for the default model, measured now
    cfg = ModelConfig(vocab_size=80)
    print(cpu_name(), f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"default model: bfloat16 autocast is {time_bf16_against_float32(cfg, 32):.2f}x float32 here")
