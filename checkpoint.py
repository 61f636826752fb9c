"""Checkpoints as plain data, and the one loader every script shares.

A checkpoint is a dict of tensors and plain Python values (no pickled classes), so it loads with
`torch.load(path, weights_only=True)`: opening a file cannot run code. It carries everything needed to resume a run
exactly and to generate without side files:

    format, version    "scratchgpt-lm", 1 — to refuse foreign files clearly
    model              the un-compiled model's state_dict
    model_config       ModelConfig as a dict
    train_config       TrainConfig as a dict
    tokenizer          the tokenizer.json text
    optimizer          AdamW's state_dict
    step               optimizer steps done (also the data position: batches are a function of the step)
    best_val_loss      the lowest validation loss so far
    rng                torch's RNG state (dropout), CUDA's when on a GPU

Writes go to a temporary file that is renamed into place, so a crash mid-write leaves the previous file intact.
This file also says where the model runs (device, dtype) since every script needs the same rules for that.
Read next: playground.py.
"""
import contextlib
import os
from pathlib import Path

import torch

from config import ModelConfig, UserError
from gpt import GPT
from tokenizer import Tokenizer

FORMAT, VERSION = "scratchgpt-lm", 1


def save_checkpoint(path, state: dict, format: str = FORMAT):
    """torch.save to a temporary file beside `path`, flush it to disk, then atomically rename it over `path`.

    `format` names what the file holds ("scratchgpt-lm"; classify.py writes "scratchgpt-classifier")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": format, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path, expected_format: str = FORMAT) -> dict:
    """Read a checkpoint safely (weights_only=True); anything missing, broken or foreign is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train one with `python playground.py` or name another")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, a pickle with code in it: all refused here
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable checkpoint (corrupt, truncated or not a torch file): "
                        f"{reason}") from None
    if not isinstance(state, dict) or state.get("format") != expected_format:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path} is not a {expected_format} checkpoint (found {found!r})")
    if state.get("version", 0) > VERSION:
        raise UserError(f"{path} has format version {state['version']}; this code reads up to {VERSION}: update it")
    return state


def model_from_checkpoint(state: dict, device="cpu", backend: str | None = None) -> tuple[GPT, Tokenizer]:
    """Rebuild the GPT and its tokenizer from a loaded checkpoint; the model is in eval mode on `device`."""
    settings = dict(state["model_config"])
    if backend is not None:
        settings["attention_backend"] = backend
    model = GPT(ModelConfig(**settings))
    model.load_state_dict(state["model"])
    tokenizer = Tokenizer.from_json(state["tokenizer"], source="the checkpoint's tokenizer")
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Where the model runs


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


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays."""
    try:
        return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX") or \
            "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 where the hardware does it fast (recent GPUs, CPUs with AVX-512 BF16), else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision: matmuls in bfloat16, weights and reductions kept in float32 (no loss scaling needed)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
