"""Shared test setup: make the repository root importable, keep runs hermetic and single-threaded.

The test models are tiny: a second thread buys nothing, and on a busy 2-core machine two OpenMP threads that wait
for each other at every op make a 0.01 s step take 0.5 s. The variable is set before torch is imported, so the
subprocesses the tests start (torchrun, the CLIs) inherit it.
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import pytest  # noqa: E402  (after the environment is set, before any test imports torch)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache directory of the test's own, so that no test reads what another one cached."""
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path / "cache"))
