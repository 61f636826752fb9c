"""Every setting of the engine, typed, with a default and a help text.

The settings live in dataclasses (ModelConfig for the network's shape, TrainConfig for the training run);
the command line is generated from them, so `python playground.py --help` lists every field with its default.
Values come from three places, later ones winning:

    dataclass default  <  a YAML file given with --config  <  flags on the command line

Both flag spellings work (`--embedding_dim=384` and `--embedding_dim 384`); a boolean is switched on by the bare flag
(`--resume`) or set explicitly (`--resume=false`). An unknown key, from a flag or from YAML, is an error that names the
closest valid one. Every check lives in a dataclass's __post_init__, so an invalid config object never exists.

User mistakes raise UserError; `run_main` turns one into a single line on stderr and a non-zero exit.
Read next: attention.py.
"""
import argparse
import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field


class UserError(Exception):
    """A mistake the user can fix (bad flag, bad file, impossible shape); printed as one line, no traceback."""


def arg(default, help: str, choices=None):
    """A dataclass field that carries its command-line help text (and allowed values)."""
    return field(default=default, metadata={"help": help, "choices": choices})


# What `python playground.py` trains when no --config is given (and what `python prepare.py` prepares for): the modern
# recipe for five minutes. The flags' own defaults (below) are GPT-2's recipe, which configs/gpt2.yaml spells out.
DEFAULT_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.yaml")
SEED_LIMIT = 2 ** 63  # numpy's and torch's generators both take seeds in [0, 2**63)


def check_numbers(obj):
    """Refuse what no setting means: a float field at nan or inf (`nan <= 0` is False, so range checks miss it), and a
    `seed` outside [0, 2**63), and a value outside a field's choices (a YAML file or a checkpoint does not pass
    through argparse, which checks them for flags). Every config dataclass calls this first in __post_init__."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{f.name}={value!r} is not one of {', '.join(choices)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{f.name}={value} must be a finite number")
        if f.name == "seed" and value is not None and not 0 <= value < SEED_LIMIT:
            raise UserError(f"seed={value} must be a whole number in [0, 2**63), e.g. --seed=1337")


def _check_positive(obj, *names):
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise UserError(f"{name}={value} must be positive")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of the GPT (read by gpt.GPT)."""
    vocab_size: int | None = arg(None, "number of token ids; taken from the tokenizer when not given")
    block_size: int = arg(128, "context length: the most tokens the model sees at once")
    embedding_dim: int = arg(128, "width of the residual stream (C)")
    num_of_layers: int = arg(4, "number of transformer blocks")
    num_of_heads: int = arg(4, "attention heads per block; must divide embedding_dim")
    dropout: float = arg(0.0, "dropout probability in [0, 1) on attention weights and residual branches")
    bias: bool = arg(True, "use biases in Linear layers and LayerNorms, as GPT-2 does")
    attention_backend: str = arg("manual", "hand-written attention.py, torch's fused scaled_dot_product_attention, "
                                           "or flash_attention.py (O(T) memory for long contexts)",
                                 choices=("manual", "sdpa", "flash"))
    activation: str = arg("gelu", "the MLP's nonlinearity: exact GELU (erf), the tanh approximation GPT-2 was "
                                  "trained with, or ReLU squared (So et al. 2021, the modern recipe)",
                          choices=("gelu", "gelu_tanh", "relu2"))
    layer_norm_eps: float = arg(1e-5, "epsilon added to the variance (mean square) in every LayerNorm (RMSNorm); GPT-2 uses 1e-5")
    position: str = arg("learned", "where positions come from: GPT-2's learned table added to the token embedding, "
                                   "or rotary embeddings turning q and k (Su et al. 2021)", choices=("learned", "rope"))
    norm: str = arg("layernorm", "the normalisation before each sub-block and at the end: LayerNorm, or RMSNorm "
                                 "(Zhang & Sennrich 2019: no mean subtraction, no bias)", choices=("layernorm", "rms"))
    qk_norm: bool = arg(False, "scale each head's queries and keys to unit RMS before the scores (Henry et al. 2020)")
    tie_embeddings: bool = arg(True, "the output layer shares the token embedding's matrix, as in GPT-2; false gives "
                                     "it its own")
    zero_init: bool = arg(False, "start the projections that write into the residual stream (and an untied output "
                                 "layer) at zero, so every block begins as the identity (modded-nanoGPT)")

    def __post_init__(self):
        check_numbers(self)
        _check_positive(self, "vocab_size", "block_size", "embedding_dim", "num_of_layers", "num_of_heads")
        if self.embedding_dim % self.num_of_heads:
            raise UserError(f"embedding_dim={self.embedding_dim} is not divisible by num_of_heads={self.num_of_heads}; "
                            f"pick a multiple of {self.num_of_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout={self.dropout} must be in [0, 1)")
        if self.position == "rope" and (self.embedding_dim // self.num_of_heads) % 2:
            raise UserError(f"position=rope pairs up each head's channels: the head size embedding_dim / num_of_heads "
                            f"= {self.embedding_dim // self.num_of_heads} must be even")


@dataclass(frozen=True)
class TrainConfig:
    """How playground.py trains: data, optimisation, schedule, evaluation, checkpoints, logging."""
    corpus: str | None = arg(None, "UTF-8 text file, directory of *.txt files, or .jsonl file to train on; the "
                                   "built-in Shakespeare corpus when not given")
    text_field: str = arg("text", "the field holding each document's text in a .jsonl corpus")
    tokenizer: str = arg("char", "'char', a tokenizer.json path, or 'bpe:N' / 'bbpe:N' to train one on the corpus")
    init_from: str | None = arg(None, "fine-tune a Hugging Face GPT-2 (a directory, or a hub name such as gpt2) "
                                      "instead of training from scratch; its tokenizer comes with it")
    val_fraction: float = arg(0.1, "fraction of the token stream held out for validation: its end, or the "
                                   "last whole documents of a directory or JSONL corpus")
    batch_size: int = arg(32, "sequences per micro-batch")
    gradient_accumulation_steps: int = arg(1, "micro-batches summed into one optimizer step (1 = off)")
    max_iters: int = arg(3000, "optimizer steps to train for")
    max_minutes: float | None = arg(None, "train for about this many minutes instead: a few steps and an evaluation "
                                          "are timed first and max_iters is set to what fits, evaluations included, "
                                          "so warmup and decay fit the time; with wsd the plan follows the measured "
                                          "pace until the decay begins (typed flags win over a config file's "
                                          "max_iters or max_minutes; both typed are refused)")
    learning_rate: float = arg(4e-3, "peak learning rate, reached at the end of warmup")
    min_lr: float | None = arg(None, "floor of the decay; learning_rate / 10 when not given")
    warmup_iters: int | None = arg(None, "linear warmup steps; when not given, 5%% of max_iters capped at 2000")
    lr_decay_iters: int | None = arg(None, "step at which the decay reaches min_lr; max_iters when not given")
    schedule: str = arg("cosine", "after warmup: cosine decay to min_lr, or wsd (warmup-stable-decay): constant at the "
                                  "peak, then linear decay to min_lr over the last decay_fraction of the steps",
                        choices=("cosine", "wsd"))
    decay_fraction: float = arg(0.2, "wsd: the fraction of lr_decay_iters (or max_iters) spent decaying")
    optimizer: str = arg("adamw", "adamw for every parameter, or muon (muon.py) for the blocks' weight matrices "
                                  "with AdamW for the rest", choices=("adamw", "muon"))
    muon_learning_rate: float = arg(0.02, "peak learning rate of the matrices Muon trains (--optimizer=muon); the "
                                          "schedule scales it as it scales learning_rate")
    weight_decay: float = arg(0.1, "AdamW decoupled weight decay, on weight matrices only (GPT-1 section 4.1); "
                                   "none on Muon's")
    beta1: float = arg(0.9, "AdamW beta1")
    beta2: float = arg(0.99, "AdamW beta2")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0 = off)")
    log_interval: int = arg(10, "read the loss back from the device every this many steps: progress bar, wandb, "
                                "tokens/s, MFU and the nan check (each read makes the CPU wait for the GPU)")
    eval_interval: int = arg(500, "evaluate train and val loss every this many steps (and at the end)")
    eval_iters: int = arg(50, "batches averaged per loss estimate")
    checkpoint_interval: int = arg(500, "write out_dir/model_checkpoint.tar every this many steps (and at the end)")
    out_dir: str = arg("out", "where checkpoints (and offline wandb logs) are written")
    resume: bool = arg(False, "continue the run saved in out_dir/model_checkpoint.tar")
    overwrite: bool = arg(False, "start a new run in an out_dir that holds an earlier run's checkpoints, deleting "
                                 "them (without it, such a run is refused)")
    device: str = arg("auto", "'auto' (cuda, then mps, then cpu), or a torch device such as 'cpu' or 'cuda:0'")
    dtype: str = arg("auto", "bfloat16 and float16 mean autocast (weights stay float32; float16 adds loss scaling, "
                             "CUDA only); auto times float32 and bfloat16 on this machine (once, cached) and picks "
                             "the faster", choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = arg(False, "torch.compile the model (falls back to eager with a warning if it fails)")
    activation_checkpointing: bool = arg(False, "keep only each block's input during the forward pass and recompute "
                                                "the rest in backward: less memory, about a third more compute")
    peak_flops: float | None = arg(None, "one device's peak FLOP/s for the MFU figure; from flops.py's GPU table, or "
                                         "measured on a CPU, when not given")
    seed: int = arg(1337, "random seed for initialisation and batch sampling")
    wandb: bool = arg(False, "log metrics and config to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    wandb_project: str = arg("scratchgpt", "Weights & Biases project name")
    sample_tokens: int = arg(300, "tokens to sample from the model at the end of training (0 = no sample)")

    def __post_init__(self):
        check_numbers(self)
        _check_positive(self, "batch_size", "gradient_accumulation_steps", "max_iters", "learning_rate",
                        "muon_learning_rate", "eval_interval", "eval_iters", "checkpoint_interval", "lr_decay_iters",
                        "log_interval", "peak_flops", "max_minutes")
        if self.max_minutes is not None and self.max_minutes > 10 ** 6:
            raise UserError(f"max_minutes={self.max_minutes} is more than a million minutes (two years)")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise UserError(f"decay_fraction={self.decay_fraction} must be in [0, 1], e.g. --decay_fraction=0.2")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"val_fraction={self.val_fraction} must be between 0 and 1")
        for name in ("warmup_iters", "sample_tokens", "weight_decay", "grad_clip", "min_lr"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{name}={value} must not be negative")
        if self.min_lr is not None and self.min_lr > self.learning_rate:
            raise UserError(f"min_lr={self.min_lr} is above learning_rate={self.learning_rate}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name}={getattr(self, name)} must be in [0, 1), e.g. --beta1=0.9 --beta2=0.99")


# ---------------------------------------------------------------------------------------------------------------------
# From strings (flags, YAML) to typed values


def _base_type(tp):
    """int | None -> int; plain types pass through."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        (inner,) = [t for t in typing.get_args(tp) if t is not type(None)]
        return inner
    return tp


def _convert(name: str, tp, value):
    """Turn a flag string or YAML value into the field's type, or raise a UserError that says what was expected."""
    optional = _base_type(tp) is not tp
    tp = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise UserError(f"{name} needs a value")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{name}={value!r} is not a boolean; use true or false")
    if isinstance(value, bool):  # YAML's `true` must not silently become 1
        raise UserError(f"{name}={value!r} should be a {tp.__name__}")
    try:
        if tp is int and isinstance(value, str):
            number = float(value)  # accept 5e3 for an int field, but not 2.5
            if not number.is_integer():
                raise ValueError
            return int(number)
        return tp(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r} should be a {tp.__name__}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage and exit 2; we want one line
        raise UserError(message)


def _fields(classes):
    hints = {}
    for cls in classes:
        hints.update({f.name: (f, typing.get_type_hints(cls)[f.name]) for f in dataclasses.fields(cls)})
    return hints


def build_parser(classes, description: str, positional: str | None = None,
                 default_config: str | None = None) -> argparse.ArgumentParser:
    """A parser with one --flag per dataclass field; `positional` names a field that may also be given bare."""
    parser = _Parser(description=description, allow_abbrev=False,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if positional:
        parser.add_argument(f"_{positional}", nargs="?", default=argparse.SUPPRESS, metavar=positional.upper(),
                            help=f"same as --{positional}")
    parser.add_argument("--config", default=default_config, metavar="FILE.yaml",
                        help="YAML file setting any of the fields below (a flag given as well wins)")
    for cls in classes:
        group = parser.add_argument_group(cls.__name__, cls.__doc__)
        for name, (f, tp) in _fields([cls]).items():
            base = _base_type(tp)
            kwargs = dict(default=f.default, help=f.metadata["help"], metavar=base.__name__.upper())
            if base is bool:
                kwargs.update(nargs="?", const="true", metavar="BOOL")
            if f.metadata.get("choices"):
                kwargs.update(choices=f.metadata["choices"], metavar=None)
            group.add_argument(f"--{name}", **kwargs)
    return parser


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def load_config(argv, classes, description: str, positional: str | None = None,
                default_config: str | None = None, yaml_classes=()):
    """Parse argv (and --config YAML, or default_config when no --config is given) into one instance of each
    dataclass in `classes`.

    yaml_classes: more settings a config file may hold, read past without error: prepare.py takes a training config
    for its corpus and tokenizer and leaves the model and the schedule to playground.py. A key no class knows is
    still refused.

    Returns (instances, explicit) where `explicit` is the set of field names the user set by flag or YAML, so a
    resumed run can tell "the user asked for max_iters=5000" from "max_iters is at its default".
    """
    fields = _fields(classes)
    parser = build_parser(classes, description, positional, default_config)
    if "-h" in argv or "--help" in argv:  # before the defaults are hidden below, so --help shows them
        parser.print_help()
        sys.exit(0)
    for action in parser._actions:  # keep only what was typed, so defaults never shadow the YAML file
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    namespace, unknown = parser.parse_known_args(argv)
    for extra in unknown:
        if extra.startswith("-"):
            name = extra.lstrip("-").split("=")[0]
            raise UserError(f"unknown flag --{name}{_suggest(name, fields)}")
        raise UserError(f"unexpected argument {extra!r}")
    given = vars(namespace)
    if positional and f"_{positional}" in given:
        if positional in given:
            raise UserError(f"{positional} given twice (as an argument and as --{positional})")
        given[positional] = given.pop(f"_{positional}")

    values = {}
    config_path = given.pop("config", None) or default_config
    if config_path:
        known = {**_fields(yaml_classes), **fields}
        values.update({k: v for k, v in _read_yaml(config_path, known).items() if k in fields})
    values.update(given)
    typed = {name: _convert(name, fields[name][1], value) for name, value in values.items()}
    instances = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        instances.append(cls(**{k: v for k, v in typed.items() if k in names}))
    return instances, set(typed)


def _read_yaml(path: str, fields) -> dict:
    import yaml  # only needed when a config file is given

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not UTF-8 (invalid byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        f"save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of field: value")
    for key in data:
        if key not in fields:
            raise UserError(f"unknown key {key!r} in {path}{_suggest(str(key), fields)}")
    return data


def markdown_reference(classes) -> str:
    """The settings as a Markdown table (the README's command-line reference; a test keeps the two in sync)."""
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for name, (f, _) in _fields(classes).items():
        choices = f" ({' / '.join(f.metadata['choices'])})" if f.metadata.get("choices") else ""
        rows.append(f"| `--{name}` | `{f.default}` | {f.metadata['help'].replace('%%', '%')}{choices} |")
    return "\n".join(rows)


def run_main(main, user_errors=()):
    """Run a script's main(); a user mistake becomes one line on stderr and exit status 1, Ctrl-C exits 130."""
    try:
        main()
    except (UserError, *user_errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def update_readme(path: str = "README.md"):
    """Rewrite the README's command-line reference from the dataclasses (run `python config.py`)."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    start, end = "<!-- reference:start -->\n", "<!-- reference:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    Path(path).write_text(head + start + markdown_reference((ModelConfig, TrainConfig)) + "\n" + end + tail)


if __name__ == "__main__":
    update_readme()
