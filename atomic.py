"""The project's one way to write a file: whole or not at all, never half of one.

Every file this project writes (checkpoints, tokenizer.json, the token cache, the precision verdicts) goes through
`atomic_file`:

    1. write to a temporary file beside the target (same folder, so same disk: the rename below cannot copy)
    2. flush it and fsync it: the bytes are on disk before the name points at them
    3. os.replace it over the target: readers see the old file or the new one, never a mix

A Ctrl-C during the write waits until it is done (then interrupts as usual), a full disk is one line saying the
previous file is intact, and no temporary file is ever left behind. This module imports no torch, so the tokenizer
package uses it too.

    with atomic_file("out/model_checkpoint.tar") as f:
        torch.save(state, f)
    atomic_write_bytes("cache/tokens.json", b'{"num_tokens": 42}')

Read next: checkpoint.py.
"""
import contextlib
import os
import re
import signal
import threading
from pathlib import Path

from config import UserError


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) until the block is done, then deliver it: a file being written is finished first.

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


def write_failure(e: Exception) -> str:
    """OSError(28, 'No space left on device') -> 'No space left on device'; torch's writer says '[enforce fail at
    inline_container.cc:603] . unexpected pos 64 vs 128' -> 'unexpected pos 64 vs 128'."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    text = (text.strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)[:200]


@contextlib.contextmanager
def atomic_file(path, error: type[Exception] = UserError, create_folder: bool = True, defer_interrupts: bool = True):
    """`with atomic_file(path) as f: f.write(...)`: f is a binary file beside `path`, fsynced and renamed over `path`
    in one step when the block ends; an exception in the block leaves `path` as it was. A block that streams for
    minutes (encoding a corpus) passes defer_interrupts=False, so that Ctrl-C stops it at once.

    A failed write (disk full, folder missing or read-only) raises `error` with one line. The temporary name carries
    the process id: under torchrun, processes writing the same cache file never write into each other's."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with interrupts_deferred() if defer_interrupts else contextlib.nullcontext():
        try:
            if create_folder:
                path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
        except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as a RuntimeError
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
            raise error(f"cannot write {path}: {write_failure(e)}; {kept}. Free some disk space or choose another "
                        f"folder") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write(path, write, **options):
    """atomic_file around write(f): atomic_write(path, lambda f: torch.save(state, f))."""
    with atomic_file(path, **options) as f:
        write(f)


def atomic_write_bytes(path, data: bytes, **options):
    """atomic_file of bytes already in memory."""
    with atomic_file(path, **options) as f:
        f.write(data)
