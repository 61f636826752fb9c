"""config.py: flags, YAML, precedence and the errors a user sees."""
import pytest

from config import ModelConfig, TrainConfig, UserError, build_parser, load_config

CLASSES = (ModelConfig, TrainConfig)


def parse(argv):
    (model, train), explicit = load_config(argv, CLASSES, "test", positional="corpus")
    return model, train, explicit


def test_both_flag_spellings_and_positional_corpus():
    model, train, explicit = parse(["data.txt", "--embedding_dim=384", "--num_of_heads", "6", "--resume"])
    assert model.embedding_dim == 384 and model.num_of_heads == 6
    assert train.corpus == "data.txt" and train.resume is True
    assert explicit == {"corpus", "embedding_dim", "num_of_heads", "resume"}


def test_defaults_when_nothing_given():
    model, train, explicit = parse([])
    assert model == ModelConfig() and train == TrainConfig() and explicit == set()


def test_booleans_and_optionals():
    model, train, _ = parse(["--resume=false", "--bias=no", "--min_lr=none", "--max_iters=5e3"])
    assert train.resume is False and model.bias is False and train.min_lr is None and train.max_iters == 5000


def test_yaml_sets_fields_and_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("embedding_dim: 96\nnum_of_heads: 3\nlearning_rate: 3e-4\nmax_iters: 10\n")
    model, train, _ = parse(["--config", str(path), "--max_iters=20"])
    assert model.embedding_dim == 96 and model.num_of_heads == 3
    assert train.learning_rate == 3e-4 and train.max_iters == 20


@pytest.mark.parametrize("argv, message", [
    (["--embedding_dim=100", "--num_of_heads=3"],
     "embedding_dim=100 is not divisible by num_of_heads=3; pick a multiple of 3"),
    (["--embeding_dim=64"], "unknown flag --embeding_dim; did you mean embedding_dim?"),
    (["--dropout=1.0"], "dropout=1.0 must be in [0, 1)"),
    (["--num_of_layers=0"], "num_of_layers=0 must be positive"),
    (["--batch_size=abc"], "batch_size='abc' should be a int"),
    (["--max_iters=2.5"], "max_iters='2.5' should be a int"),
    (["--dtype=float64"], "invalid choice"),
    (["a.txt", "b.txt"], "unexpected argument 'b.txt'"),
])
def test_bad_values_are_actionable_errors(argv, message):
    with pytest.raises(UserError, match=None) as info:
        parse(argv)
    assert message in str(info.value)


def test_unknown_yaml_key_names_the_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_layers: 4\n")
    with pytest.raises(UserError, match=r"unknown key 'num_layers' .*did you mean num_of_layers\?"):
        parse(["--config", str(path)])


def test_missing_or_broken_yaml(tmp_path):
    with pytest.raises(UserError, match="cannot read config file"):
        parse(["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        parse(["--config", str(bad)])


def test_help_lists_every_field_with_its_default():
    text = build_parser(CLASSES, "test", positional="corpus").format_help()
    for name in ["vocab_size", "embedding_dim", "num_of_layers", "num_of_heads", "batch_size", "block_size",
                 "dropout", "tokenizer", "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "max_iters",
                 "weight_decay", "grad_clip", "gradient_accumulation_steps", "eval_interval", "eval_iters",
                 "checkpoint_interval", "out_dir", "resume", "device", "dtype", "compile", "seed", "wandb", "config"]:
        assert f"--{name}" in text
    assert "(default: 4)" in text


def test_readme_reference_is_in_sync_with_the_dataclasses():
    from pathlib import Path

    from config import markdown_reference

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert markdown_reference(CLASSES) in readme, "README is stale: run `python config.py` to refresh it"


def test_help_flag_prints_defaults_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--help"])
    assert info.value.code == 0
    assert "(default: 128)" in capsys.readouterr().out
