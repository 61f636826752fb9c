"""What a run checks before any work, so that a mistake costs a second, not the hours of training before it.

Every script that writes or allocates much calls these first (playground.py, classify.py, generate.py):

    check_out_dir        a fresh run never replaces an earlier run's checkpoints (--resume, --overwrite or another
                         --out_dir); out_dir and the token cache can take new files (probed, since root ignores
                         permission bits and a path under a file or /proc only fails when written)
    check_corpus_exists  a missing corpus, said by every process of a torchrun job before they meet
    check_memory         a model, batch or sample the machine cannot hold, from a lower bound of its bytes

Each failure is a UserError: one line, nothing written. playground.py then guards what happens during the run (a
non-finite loss or weight stops it before a checkpoint is written; atomic.py makes every write whole or nothing).
Read next: training.py.
"""
import contextlib
import os
import tempfile
from pathlib import Path

import torch

import data
from config import ModelConfig, TrainConfig, UserError
from tokenizer import TokenizerError

CHECKPOINTS = ("model_checkpoint.tar", "best_checkpoint.tar")  # what a run writes in out_dir
SAMPLE_BYTES_PER_TOKEN = 256  # what the end-of-run sample holds per token (a Step, its tensor, the text): at least


def check_out_dir(cfg: TrainConfig):
    """A fresh run never replaces an earlier run's checkpoints unless told to; out_dir and the cache must be writable.

    Checked before any work, by every process under torchrun, so that each fails with the same line."""
    existing = [name for name in CHECKPOINTS if os.path.exists(os.path.join(cfg.out_dir, name))]
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume continues the run in out_dir and --overwrite deletes it; give one of them")
    if existing and not cfg.resume and not cfg.overwrite:
        raise UserError(f"{cfg.out_dir} already holds a run ({', '.join(existing)}); continue it with --resume, "
                        f"start over with --overwrite (deletes them), or choose another --out_dir")
    check_writable_dir(cfg.out_dir)
    check_writable_dir(data.cache_dir(), "the cache folder", "set SCRATCHGPT_CACHE to a folder you can write to")


def check_corpus_exists(path: str | None):
    """The corpus's missing-file error before anything else (corpus.py says the same later); the file is not read
    here, so that a pipe (`<(cat file)`) is read only once. A directory is a corpus too (its *.txt files)."""
    if path and not os.path.exists(path):
        raise TokenizerError(f"corpus file not found: {path}")


def check_memory(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int, device=None):
    """Refuse a model, batch or sample this machine cannot hold, before any work, with a lower bound of its needs:
    16 bytes per parameter (float32 weights, gradients and AdamW's two moments) plus float32 activations kept for the
    backward pass (per block at least ten (B, T, C) tensors, and the (B, T, V) logits and their gradient; with
    activation checkpointing, one per block plus the ten of the block being recomputed). Training is measured against
    the memory of `device` (a GPU's own when it is one), the end-of-run sample against the host's."""
    B, T, C, L = train_cfg.batch_size, model_cfg.block_size, model_cfg.embedding_dim, model_cfg.num_of_layers
    params = vocab_size * C + T * C + L * 12 * C * C  # embeddings; per block qkv 3C^2, proj C^2, MLP 8C^2
    kept = L + 10 if train_cfg.activation_checkpointing else 10 * L  # (B, T, C) tensors alive at once
    activations = 4 * B * T * (kept * C + 2 * vocab_size)
    check_fits(16 * params + activations, f"training {params:,} parameters on batches of {B} x {T} tokens",
               "use a smaller --embedding_dim, --num_of_layers, --block_size or --batch_size", device)
    check_fits(SAMPLE_BYTES_PER_TOKEN * train_cfg.sample_tokens, f"--sample_tokens={train_cfg.sample_tokens}",
               "ask for fewer, e.g. --sample_tokens=300 (generate.py --stream prints a long sample as it goes)")


def check_writable_dir(folder, setting: str = "--out_dir", fix: str = "choose another --out_dir"):
    """Fail now, not at the first checkpoint after hours of training, when `folder` cannot take new files: a probe file
    is created (and removed) in it or, if it does not exist yet, in its nearest existing parent, which must be a
    folder. Nothing is left behind. Works for root too, whom permission bits do not stop."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if existing == folder and not folder.is_dir():
        raise UserError(f"{setting} {folder} is a file, not a folder; {fix}")
    if not existing.is_dir():
        raise UserError(f"{setting} {folder} cannot be made: its parent {existing} is a file; {fix}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to {setting} {folder}: {e.strerror or e}; {fix}") from None


def _is_gpu(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def available_memory(device=None) -> int | None:
    """Bytes this process could still get: on a CUDA device, the GPU's free memory; on the host, MemAvailable +
    SwapFree (Linux), under a cgroup v2 limit if one is set, the physical memory elsewhere; None when nothing says."""
    if _is_gpu(device):
        return torch.cuda.mem_get_info(device)[0]  # (free, total) as the driver sees them, other processes included
    found = []
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        found.append((int(meminfo["MemAvailable"].split()[0]) + int(meminfo.get("SwapFree", "0 kB").split()[0])) * 1024)
    except (OSError, KeyError, ValueError):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    return min(found) if found else None


def check_fits(needed_bytes: float, what: str, fix: str, device=None):
    """A one-line error, before any work, when `what` needs more memory than the machine (or the GPU `device`) has left.

    `needed_bytes` should be a lower bound (an estimate that errs low): a run that could fit is never refused."""
    available = available_memory(device)
    if available is not None and needed_bytes > available:
        where = f"the GPU {device} has" if _is_gpu(device) else "this machine has"
        raise UserError(f"{what} needs at least {needed_bytes / 2**30:,.1f} GiB of memory, but {where} "
                        f"{available / 2**30:,.1f} GiB available; {fix}")
