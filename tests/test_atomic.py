"""atomic.py: a file is replaced whole or not at all, the error is one line, and the tokenizer package stays light."""
import errno
import subprocess
import sys
from pathlib import Path

import pytest

from atomic import atomic_file, atomic_write_bytes
from config import UserError


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "cache.json"
    atomic_write_bytes(path, b"old")
    with pytest.raises(UserError, match=r"cannot write .*cache.json: No space left on device; the previous "
                                        r"cache.json is intact"):
        with atomic_file(path) as f:
            f.write(b"half of the n")
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path) as f:
            f.write(b"half of the n")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["cache.json"]


def test_the_tokenizer_package_does_not_import_torch():
    code = "import sys, tokenizer; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parent.parent, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
