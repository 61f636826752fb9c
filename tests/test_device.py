"""device.py: --dtype=auto decides by measuring, caches the verdict, and a forced choice never measures."""
import json

import pytest
import torch

import device
from config import ModelConfig, UserError
from tiny import GPT2_RECIPE

CPU = torch.device("cpu")
TINY = ModelConfig(vocab_size=11, block_size=16, embedding_dim=32, num_of_layers=2, num_of_heads=2)


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: a cache of its own per test


@pytest.fixture
def probe(monkeypatch):
    """Replace the timing with a known answer and count the calls."""
    calls = []

    def fake(model_config, batch_size):
        calls.append((model_config, batch_size))
        return probe.speedup

    probe.speedup, probe.calls = 1.0, calls
    monkeypatch.setattr(device, "time_bf16_against_float32", fake)
    return probe


def test_auto_takes_bfloat16_when_it_measures_faster(probe):
    probe.speedup = 1.9
    dtype, note = device.choose_precision("auto", CPU, TINY, 8)
    assert dtype == torch.bfloat16 and "1.90x float32" in note


@pytest.mark.parametrize("speedup", [0.6, 1.0, 1.04])
def test_auto_keeps_float32_unless_bfloat16_wins_clearly(probe, speedup):
    probe.speedup = speedup
    dtype, note = device.choose_precision("auto", CPU, TINY, 8)
    assert dtype == torch.float32 and note.startswith("float32") and f"{speedup:.2f}x" in note


def test_the_verdict_is_cached_and_reused(probe, tmp_path):
    probe.speedup = 1.5
    assert device.resolve_dtype("auto", CPU, TINY, 8) == torch.bfloat16
    probe.speedup = 0.5  # a second measurement would now say float32: the cache must answer instead
    assert device.resolve_dtype("auto", CPU, TINY, 8) == torch.bfloat16
    assert len(probe.calls) == 1
    saved = json.loads((tmp_path / "cache" / "precision.json").read_text())
    assert saved == {device.probe_key(TINY, 8): 1.5}
    # another model shape is another question
    assert device.resolve_dtype("auto", CPU, ModelConfig(vocab_size=11, block_size=16), 8) == torch.float32
    assert len(probe.calls) == 2


def test_a_damaged_cache_is_measured_again(probe, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "precision.json").write_text("{not json")
    probe.speedup = 2.0
    assert device.resolve_dtype("auto", CPU, TINY, 8) == torch.bfloat16
    assert len(probe.calls) == 1


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_a_forced_choice_skips_the_probe(probe, name, dtype):
    assert device.choose_precision(name, CPU, TINY, 8) == (dtype, "as asked")
    assert probe.calls == []


def test_float16_needs_a_gpu():
    with pytest.raises(UserError, match="float16 needs a CUDA GPU"):
        device.choose_precision("float16", CPU, TINY, 8)


def test_the_real_probe_measures_and_leaves_the_rng_alone():
    state = torch.get_rng_state()
    speedup = device.time_bf16_against_float32(TINY, 8, repeats=1)
    assert speedup > 0 and speedup != float("inf")
    assert torch.equal(state, torch.get_rng_state())


def test_playground_prints_the_verdict(probe, tmp_path, capsys):
    import playground

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefgh ijklmnop\n" * 200, encoding="utf-8")
    probe.speedup = 0.7
    playground.main([str(corpus), "--config", GPT2_RECIPE, f"--out_dir={tmp_path / 'out'}", "--block_size=16",
                     "--embedding_dim=32", "--num_of_layers=1", "--num_of_heads=2", "--batch_size=4", "--max_iters=2",
                     "--eval_iters=1", "--sample_tokens=0", "--device=cpu"])
    assert "precision: float32: bfloat16 autocast is 0.70x float32 here" in capsys.readouterr().out
