"""flops.py: 6N + 12LTC against a hand count, the GPU table, the CPU probe (positive, cached), the speedometer."""
import json

import pytest
import torch

import flops
from config import ModelConfig
from gpt import GPT

pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: a cache of its own per test


def test_flops_per_token_is_palms_formula_counted_by_hand():
    model = GPT(ModelConfig(vocab_size=10, block_size=4, embedding_dim=8, num_of_layers=1, num_of_heads=2))
    C = 8
    N = (10 * C  # the token embedding, which is also the output layer (tied): counted once
         + 2 * C + (C * 3 * C + 3 * C) + (C * C + C)  # ln_1, qkv, attention's output projection
         + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)  # ln_2, the MLP's two layers
         + 2 * C)  # ln_f; the position table (4 x 8) is looked up, not multiplied: left out
    assert N == 968 and flops.matmul_parameters(model) == N
    assert flops.flops_per_token(model) == 6 * 968 + 12 * 1 * 4 * 8 == 6192


def test_untied_and_rotary_models_count_the_output_layer_not_the_tables():
    settings = dict(vocab_size=10, block_size=4, embedding_dim=8, num_of_layers=1, num_of_heads=2)
    tied = flops.matmul_parameters(GPT(ModelConfig(**settings)))
    assert flops.matmul_parameters(GPT(ModelConfig(**settings, tie_embeddings=False))) == tied  # lm_head: the same
    assert flops.matmul_parameters(GPT(ModelConfig(**settings, position="rope"))) == tied  # no table to leave out


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA A100-SXM4-40GB", torch.bfloat16, 312), ("NVIDIA A100 80GB PCIe", torch.float32, 19.5),
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989), ("NVIDIA H100 PCIe", torch.float16, 756),
    ("Tesla V100-SXM2-16GB", torch.float16, 125), ("Tesla V100-PCIE-32GB", torch.float16, 112),
    ("Tesla T4", torch.float16, 65), ("NVIDIA A10G", torch.bfloat16, 70), ("NVIDIA A10", torch.bfloat16, 125),
    ("NVIDIA L4", torch.bfloat16, 121), ("NVIDIA GeForce RTX 4090", torch.bfloat16, 165.2),
    ("NVIDIA GeForce RTX 3090", torch.float16, 71),
])
def test_gpu_peaks_by_name_and_precision(name, dtype, tflops):
    assert flops.gpu_peak_flops(name, dtype) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("name, dtype", [("Tesla T4", torch.bfloat16), ("NVIDIA L40S", torch.bfloat16),
                                         ("Some New GPU", torch.float32)])
def test_no_peak_for_a_precision_the_gpu_lacks_or_a_gpu_not_in_the_table(name, dtype):
    assert flops.gpu_peak_flops(name, dtype) is None


def test_the_cpu_probe_keeps_the_fastest_measurement_of_every_run(monkeypatch, tmp_path):
    peak, source = flops.peak_flops(torch.device("cpu"), torch.float32)
    assert peak > 0 and "fastest" in source
    saved = json.loads((tmp_path / "cache" / "peak_flops.json").read_text())
    assert list(saved.values()) == [pytest.approx(peak, rel=1e-3)]
    monkeypatch.setattr(flops, "time_matmul", lambda *a, **k: peak / 3)  # a busy machine: slower this time
    assert flops.peak_flops(torch.device("cpu"), torch.float32)[0] == pytest.approx(peak, rel=1e-3)  # kept
    monkeypatch.setattr(flops, "time_matmul", lambda *a, **k: peak * 2)  # a quieter one: faster
    assert flops.peak_flops(torch.device("cpu"), torch.float32)[0] == pytest.approx(2 * peak, rel=1e-3)
    saved = json.loads((tmp_path / "cache" / "peak_flops.json").read_text())
    assert list(saved.values()) == [pytest.approx(2 * peak, rel=1e-3)]
    monkeypatch.setattr(flops, "time_matmul", lambda *a, **k: pytest.fail("measured with --peak_flops given"))
    assert flops.peak_flops(torch.device("cpu"), torch.float32, override=5e12) == (5e12, "--peak_flops")


def test_speedometer_reads_tokens_per_second_and_mfu():
    clock = iter([100.0, 102.0, 103.0])
    speed = flops.Speedometer(flops_per_token=1000, peak=4e6, devices=2, clock=lambda: next(clock))  # t = 100
    speed.count(8000)
    speed.count(8000)
    assert speed.read() == (8000.0, pytest.approx(8000 * 1000 / 8e6))  # 16,000 tokens in 2 s; 2 devices' peak
    speed.count(500)  # restarted at t = 102 by read()
    assert speed.read()[0] == 500.0
