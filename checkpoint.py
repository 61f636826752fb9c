"""The project's file formats: a language-model checkpoint and a classifier checkpoint, each a typed record.

A checkpoint is a dict of tensors and plain Python values (no pickled classes), so it loads with
`torch.load(path, weights_only=True)`: opening a file cannot run code. Its `format` field says which record it is,
and `load(path)` returns that record, so no caller has to guess a file's kind from an error.

LanguageModelCheckpoint ("scratchgpt-lm", written by playground.py, read by generate.py and classify.py) carries
everything needed to resume a run exactly and to generate without side files:

    model              the un-compiled model's state_dict
    model_config       ModelConfig as a dict
    tokenizer          the tokenizer.json text
    train_config       TrainConfig as a dict
    optimizer          AdamW's state_dict; with --optimizer=muon, {"muon": Muon's, "adamw": AdamW's}
    step               optimizer steps done (also the data position: batches are a function of the step)
    best_val_loss      the lowest validation loss so far
    rng                torch's CPU RNG state (dropout); a GPU's generator is not saved
    scaler             the float16 loss scaler's state (training.py), None in float32 and bfloat16
    history            every evaluation so far: [{step, tokens, train, val, bpc, lr}, ...] (plot.py draws it)

ClassifierCheckpoint ("scratchgpt-classifier", written by `classify.py train`) holds the GPT body and head, the
class names and the pooling, plus the best epoch's figures. Both are written through atomic.py: whole or not at all.
Read next: preflight.py, then playground.py.
"""
import dataclasses
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from atomic import atomic_write
from config import ModelConfig, UserError
from gpt import GPT
from tokenizer import Tokenizer

VERSION = 1


def save_checkpoint(path, state: dict, format: str = "scratchgpt-lm"):
    """torch.save `state`, labelled with its format and version, atomically (atomic.py): the records' one writer.

    A failed write (disk full, folder gone) is a UserError and leaves the previous file as it was."""
    atomic_write(path, lambda f: torch.save({"format": format, "version": VERSION, **state}, f))


def load_checkpoint(path, expected_format: str | None = "scratchgpt-lm", required=("model", "model_config",
                                                                               "tokenizer")) -> dict:
    """The plain dict a checkpoint file holds, read safely (weights_only=True); what is missing, broken or foreign
    is a one-line UserError. The records below are built from it.

    expected_format: the `format` the file must have; None accepts every kind in KINDS.
    required: the keys the caller will read (resuming needs the optimizer too; a classifier its classes)."""
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
    formats = list(KINDS) if expected_format is None else [expected_format]
    if not isinstance(state, dict) or state.get("format") not in formats:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path} is not a {' or '.join(formats)} checkpoint (found {found!r})")
    if not isinstance(state.get("version", 0), int) or state.get("version", 0) > VERSION:
        raise UserError(f"{path} has format version {state['version']!r}; this code reads up to {VERSION}: update it")
    missing = [key for key in required if key not in state]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}: it is an incomplete {state['format']} checkpoint "
                        f"(edited, or written by other code); use another checkpoint")
    return state


@dataclass
class _Record:
    """What both records hold and do: the model's weights, config and tokenizer; to and from the plain dict in the
    file; save, load."""
    FORMAT: ClassVar[str]
    REQUIRED: ClassVar[tuple[str, ...]]  # the keys every reader of this kind needs
    model: dict  # the state_dict
    model_config: dict  # ModelConfig as a dict
    tokenizer: str  # the tokenizer.json text

    def to_state(self) -> dict:
        """The fields that are set, as a plain dict (not dataclasses.asdict, which would deep-copy every tensor)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_state(cls, state: dict, source="the checkpoint"):
        """The record of a dict load_checkpoint returned; keys this code does not know are ignored."""
        missing = [key for key in cls.REQUIRED if key not in state]
        if missing:
            raise UserError(f"{source} has no {', '.join(missing)}: it is an incomplete {cls.FORMAT} checkpoint "
                            f"(edited, or written by other code); use another checkpoint")
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls) if f.name in state})

    def save(self, path):
        save_checkpoint(path, self.to_state(), self.FORMAT)

    @classmethod
    def load(cls, path, required: tuple[str, ...] = ()):
        """The record in `path`, which must be of this kind and hold REQUIRED and `required`."""
        return cls.from_state(load_checkpoint(path, cls.FORMAT, cls.REQUIRED + tuple(required)), path)


@dataclass
class LanguageModelCheckpoint(_Record):
    """playground.py's model_checkpoint.tar and best_checkpoint.tar (the fields: see the module docstring)."""
    FORMAT: ClassVar[str] = "scratchgpt-lm"
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "model_config", "tokenizer")
    RESUME: ClassVar[tuple[str, ...]] = ("optimizer", "train_config", "step", "best_val_loss", "rng")
    train_config: dict | None = None
    optimizer: dict | None = None
    step: int | None = None
    best_val_loss: float = math.inf
    rng: dict | None = None
    scaler: dict | None = None
    history: list | None = None

    @classmethod
    def of(cls, model: GPT, tokenizer: Tokenizer, **fields) -> "LanguageModelCheckpoint":
        """The record of a model in memory: LanguageModelCheckpoint.of(model, tokenizer, step=0).save(path)."""
        return cls(model.state_dict(), dataclasses.asdict(model.config), tokenizer.to_json(), **fields)


@dataclass
class ClassifierCheckpoint(_Record):
    """classify.py's classifier.tar: a GPT body and a head (model), the classes, the pooling, the best epoch."""
    FORMAT: ClassVar[str] = "scratchgpt-classifier"
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "model_config", "tokenizer", "classes", "pooling")
    classes: list
    pooling: str
    train_config: dict | None = None
    step: int | None = None  # the best evaluation's step (0: the linear probe)
    val_accuracy: float | None = None
    val_loss: float | None = None
    baseline_accuracy: float | None = None
    history: list | None = None

    @classmethod
    def from_state(cls, state: dict, source="the checkpoint"):
        record = super().from_state(state, source)
        if record.pooling not in ("last", "mean") or not isinstance(record.classes, list):
            raise UserError(f"{source}: its pooling or classes are not ones this code writes; use another "
                            f"classifier")
        return record


KINDS = {kind.FORMAT: kind for kind in (LanguageModelCheckpoint, ClassifierCheckpoint)}


def load(path) -> LanguageModelCheckpoint | ClassifierCheckpoint:
    """Whichever record `path` holds, told apart by its `format` field."""
    state = load_checkpoint(path, expected_format=None, required=())
    return KINDS[state["format"]].from_state(state, path)


def load_weights(model: torch.nn.Module, weights, source: str = "the checkpoint"):
    """model.load_state_dict(weights), with a one-line error when they do not fit the model the config describes."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        details = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = details[1] if len(details) > 1 else (details or [type(e).__name__])[0]
        raise UserError(f"{source}: its weights do not fit its model_config ({reason[:200]}); the file mixes two "
                        f"models, use another checkpoint") from None


def model_config_from(checkpoint, source: str = "the checkpoint", **overrides) -> ModelConfig:
    """ModelConfig(**checkpoint.model_config) of a record or a loaded dict, refusing what is not one in one line."""
    settings = checkpoint["model_config"] if isinstance(checkpoint, dict) else checkpoint.model_config
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


def model_from_checkpoint(checkpoint, device="cpu", backend: str | None = None,
                          source: str = "the checkpoint") -> tuple[GPT, Tokenizer]:
    """Rebuild the GPT and its tokenizer from a LanguageModelCheckpoint (or its loaded dict); the model is in eval
    mode on `device`. `source` (the file's path) names the checkpoint in error messages."""
    if isinstance(checkpoint, dict):
        checkpoint = LanguageModelCheckpoint.from_state(checkpoint, source)
    model = GPT(model_config_from(checkpoint, source, **({"attention_backend": backend} if backend else {})))
    load_weights(model, checkpoint.model, source)
    tokenizer = Tokenizer.from_json(checkpoint.tokenizer, source=f"{source}'s tokenizer")
    return model.to(device).eval(), tokenizer


def load_model(path, device="cpu", backend: str | None = None) -> tuple[GPT, Tokenizer,
                                                                       LanguageModelCheckpoint | None]:
    """The one loader of a language model: a checkpoint file written here, or a Hugging Face GPT-2 directory or hub
    name (gpt2.py). Returns (the GPT in eval mode on `device`, its tokenizer, the checkpoint's record; None for
    GPT-2)."""
    if os.path.isfile(path) or str(path).endswith(".tar"):
        found = LanguageModelCheckpoint.load(path)
        return (*model_from_checkpoint(found, device, backend, source=str(path)), found)
    import gpt2  # gpt2.py builds on gpt.py and config.py only

    settings = {} if backend is None else {"attention_backend": backend}
    return (*gpt2.load_pretrained(str(path), device=device, **settings), None)
