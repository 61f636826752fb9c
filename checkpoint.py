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
    history            every evaluation so far: [{step, tokens, train, val, bpc, lr}, ...] (plot.py draws it)
    rng                torch's RNG state (dropout), CUDA's when on a GPU

Writes go to a temporary file that is renamed into place, so a crash mid-write leaves the previous file intact; a
Ctrl-C during a write waits for it to finish, and a full disk is one line with the previous file untouched.
Read next: preflight.py, then playground.py.
"""
import contextlib
import os
import re
import signal
import threading
import zipfile
from pathlib import Path

import torch

from config import ModelConfig, UserError
from gpt import GPT
from tokenizer import Tokenizer

FORMAT, VERSION = "scratchgpt-lm", 1


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) until the block is done, then deliver it: a checkpoint being written is finished first.

    Without this, an interrupt inside torch.save's C++ writer can surface as a RuntimeError and a traceback."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)  # the previous handler now runs: KeyboardInterrupt, by default


def _write_failure(e: Exception) -> str:
    """OSError(28, 'No space left on device') -> 'No space left on device'; torch's writer says '[enforce fail at
    inline_container.cc:603] . unexpected pos 64 vs 128' -> 'unexpected pos 64 vs 128'."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    text = (text.strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)[:200]


def save_checkpoint(path, state: dict, format: str = FORMAT):
    """torch.save to a temporary file beside `path`, flush it to disk, then atomically rename it over `path`.

    `format` names what the file holds ("scratchgpt-lm"; classify.py writes "scratchgpt-classifier"). A failed write
    (disk full, folder gone) is a UserError and leaves the previous file as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with interrupts_deferred():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save({"format": format, "version": VERSION, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
        except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
            raise UserError(f"cannot write {path}: {_write_failure(e)}; {kept}. Free some disk space or choose "
                            f"another folder") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


REQUIRED = ("model", "model_config", "tokenizer")  # what every language-model use (sampling, fine-tuning) reads


def load_checkpoint(path, expected_format: str = FORMAT, required=REQUIRED) -> dict:
    """Read a checkpoint safely (weights_only=True); anything missing, broken or foreign is a one-line UserError.

    `required`: the keys the caller will read (resuming needs the optimizer too; a classifier its classes)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train one with `python playground.py` or name another")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not one of ours
        raise UserError(f"{path} is not a readable checkpoint (corrupt, truncated or not a torch file): it is not "
                        f"the zip archive torch.save writes")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged archive, a pickle with code in it: all refused here
        if "weights_only" in str(e) or "Weights only" in str(e):
            reason = "it holds Python objects other than tensors and plain values, refused since loading them " \
                     "could run code"
        else:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path} is not a readable checkpoint (corrupt, truncated or not a torch file): "
                        f"{reason}") from None
    if not isinstance(state, dict) or state.get("format") != expected_format:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path} is not a {expected_format} checkpoint (found {found!r})")
    if not isinstance(state.get("version", 0), int) or state.get("version", 0) > VERSION:
        raise UserError(f"{path} has format version {state['version']!r}; this code reads up to {VERSION}: update it")
    missing = [key for key in required if key not in state]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}: it is an incomplete {expected_format} checkpoint "
                        f"(edited, or written by other code); use another checkpoint")
    return state


def load_weights(model: torch.nn.Module, weights, source: str = "the checkpoint"):
    """model.load_state_dict(weights), with a one-line error when they do not fit the model the config describes."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        details = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = details[1] if len(details) > 1 else (details or [type(e).__name__])[0]
        raise UserError(f"{source}: its weights do not fit its model_config ({reason[:200]}); the file mixes two "
                        f"models, use another checkpoint") from None


def model_config_from(state: dict, source: str = "the checkpoint", **overrides) -> ModelConfig:
    """ModelConfig(**state["model_config"]), refusing a config that is not one with a one-line error."""
    settings = state["model_config"]
    if not isinstance(settings, dict):
        raise UserError(f"{source}: model_config is a {type(settings).__name__}, not a mapping; use another "
                        f"checkpoint")
    try:
        return ModelConfig(**{**settings, **overrides})
    except TypeError as e:
        raise UserError(f"{source}: its model_config does not describe a model this code builds ({e}); use "
                        f"another checkpoint") from None
    except UserError as e:
        raise UserError(f"{source}: its model_config is invalid: {e}") from None


def model_from_checkpoint(state: dict, device="cpu", backend: str | None = None,
                          source: str = "the checkpoint") -> tuple[GPT, Tokenizer]:
    """Rebuild the GPT and its tokenizer from a loaded checkpoint; the model is in eval mode on `device`.

    `source` (the file's path) names the checkpoint in error messages."""
    model = GPT(model_config_from(state, source, **({"attention_backend": backend} if backend else {})))
    load_weights(model, state["model"], source)
    tokenizer = Tokenizer.from_json(state["tokenizer"], source=f"{source}'s tokenizer")
    return model.to(device).eval(), tokenizer


def load_model(path, device="cpu", backend: str | None = None) -> tuple[GPT, Tokenizer, dict]:
    """The one loader of a language model: a checkpoint file written here, or a Hugging Face GPT-2 directory or hub
    name (gpt2.py). Returns (the GPT in eval mode on `device`, its tokenizer, the checkpoint dict; {} for GPT-2)."""
    if os.path.isfile(path) or str(path).endswith(".tar"):
        state = load_checkpoint(path)
        return (*model_from_checkpoint(state, device, backend, source=str(path)), state)
    import gpt2  # gpt2.py builds on gpt.py and config.py only

    settings = {} if backend is None else {"attention_backend": backend}
    return (*gpt2.load_pretrained(str(path), device=device, **settings), {})
