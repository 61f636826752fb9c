"""configs/: the GPT-2 (124M) recipe is GPT-2's shape and batch, and its CPU rehearsal trains and resumes exactly."""
from pathlib import Path

import pytest
import torch

import checkpoint
import playground
from config import ModelConfig, TrainConfig, load_config
from gpt import GPT

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GPT2_PARAMETERS = 124_439_808  # OpenAI's GPT-2 small, position and (tied) token embeddings included


def recipe(name: str, *flags):
    (model_cfg, train_cfg), _ = load_config(["--config", str(CONFIGS / name), *flags], (ModelConfig, TrainConfig), "")
    return model_cfg, train_cfg


def test_the_gpt2_recipe_is_gpt2_small_with_half_a_million_tokens_per_step():
    model_cfg, train_cfg = recipe("gpt2-124m.yaml")
    assert model_cfg.vocab_size is None  # the tokenizer's: GPT-2's 50,257
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = GPT(ModelConfig(**{**model_cfg.__dict__, "vocab_size": 50257}))
    assert model.num_parameters() == GPT2_PARAMETERS
    assert train_cfg.batch_size * model_cfg.block_size * train_cfg.gradient_accumulation_steps == 2 ** 19
    assert train_cfg.gradient_accumulation_steps % 16 == 0  # 8 GPUs, or 2 nodes of 8, share the micro-batches
    assert (train_cfg.learning_rate, train_cfg.min_lr, train_cfg.warmup_iters, train_cfg.max_iters) == \
        (6e-4, 6e-5, 2000, 600_000)
    assert (train_cfg.beta1, train_cfg.beta2, train_cfg.weight_decay, train_cfg.dtype, train_cfg.compile) == \
        (0.9, 0.95, 0.1, "bfloat16", True)


@pytest.mark.slow
@pytest.mark.usefixtures("private_cache")
def test_the_rehearsal_trains_and_resumes_to_the_same_weights(tmp_path):
    """The rehearsal as it is (built-in corpus, bbpe:1024, 4 micro-batches a step), cut to 4 steps: 15-30 s."""
    quick = ["--config", str(CONFIGS / "gpt2-124m-rehearsal.yaml"), "--eval_iters=2", "--eval_interval=2",
             "--checkpoint_interval=2", "--sample_tokens=0", "--dtype=float32"]
    playground.main([*quick, f"--out_dir={tmp_path / 'straight'}", "--max_iters=4"])
    playground.main([*quick, f"--out_dir={tmp_path / 'split'}", "--max_iters=2"])
    playground.main([f"--out_dir={tmp_path / 'split'}", "--resume", "--max_iters=4"])
    a = checkpoint.load_checkpoint(tmp_path / "straight" / "model_checkpoint.tar")
    b = checkpoint.load_checkpoint(tmp_path / "split" / "model_checkpoint.tar")
    assert a["step"] == b["step"] == 4 and a["train_config"]["gradient_accumulation_steps"] == 4
    assert a["model_config"]["block_size"] == 256 and a["model_config"]["vocab_size"] == 1024
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["best_val_loss"] == b["best_val_loss"]


def test_gpt2_yaml_is_the_default_and_modern_yaml_changes_each_option():
    defaults = (ModelConfig(), TrainConfig())
    assert recipe("gpt2.yaml") == defaults
    model_cfg, train_cfg = recipe("modern.yaml")
    changed = {name for name, value in model_cfg.__dict__.items() if value != getattr(defaults[0], name)}
    assert changed == {"position", "norm", "qk_norm", "activation", "bias", "tie_embeddings", "zero_init"}
    assert (train_cfg.optimizer, train_cfg.schedule, train_cfg.tokenizer) == ("muon", "wsd", "bbpe:1024")


def test_default_yaml_is_modern_yaml_fitted_to_five_minutes():
    modern_model, modern_train = recipe("modern.yaml")
    model_cfg, train_cfg = recipe("default.yaml")
    assert model_cfg == modern_model
    changed = {name for name, value in train_cfg.__dict__.items() if value != getattr(modern_train, name)}
    assert changed == {"max_minutes", "batch_size", "decay_fraction"} and train_cfg.max_minutes == 5


def test_python_playground_py_trains_the_default_recipe_from_scratch_only():
    """No --config: configs/default.yaml; --resume and --init_from take their settings elsewhere (the checkpoint,
    GPT-2's weights), so the default recipe is not read for them."""
    model_cfg, train_cfg, _, _ = playground.settings(["--out_dir=/nonexistent/out"])
    assert (model_cfg, train_cfg) == recipe("default.yaml", "--out_dir=/nonexistent/out")
    model_cfg, train_cfg, _, _ = playground.settings(["--config", str(CONFIGS / "gpt2.yaml"), "--out_dir=/x/out"])
    assert (model_cfg.position, train_cfg.max_minutes, train_cfg.warmup_iters) == ("learned", None, 150)
    model_cfg, train_cfg, _, _ = playground.settings(["--init_from=gpt2", "--out_dir=/nonexistent/out"])
    assert (model_cfg.position, train_cfg.optimizer, train_cfg.max_minutes) == ("learned", "adamw", None)


@pytest.mark.usefixtures("private_cache")
def test_a_resumed_default_run_keeps_its_own_settings(tmp_path):
    """--resume reads the checkpoint's settings, not configs/default.yaml's: a GPT-2 run resumes as GPT-2."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sees the fish. a dog eats a bone.\n" * 200, encoding="utf-8")
    tiny = ["--config", str(CONFIGS / "gpt2.yaml"), "--block_size=16", "--embedding_dim=32", "--num_of_layers=2",
            "--num_of_heads=2", "--eval_iters=1", "--sample_tokens=0", "--dtype=float32", "--device=cpu"]
    playground.main([str(corpus), *tiny, f"--out_dir={tmp_path / 'out'}", "--max_iters=2"])
    model_cfg, train_cfg, resumed, _ = playground.settings([str(corpus), f"--out_dir={tmp_path / 'out'}", "--resume",
                                                             "--max_iters=4"])
    assert (model_cfg.position, train_cfg.optimizer, train_cfg.tokenizer, train_cfg.max_iters) == \
        ("learned", "adamw", "char", 4) and resumed.step == 2
