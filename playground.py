"""Train a GPT on a text file: `python playground.py corpus.txt --embedding_dim=384 --num_of_layers=4 ...`.

With no corpus it trains on the built-in Shakespeare (data.py) and prints a sample when done. With no --config it
trains configs/default.yaml, the modern recipe fitted to five minutes (--max_minutes: the first steps are timed, the
run sized to fit and kept to the pace); every flag's own default is GPT-2's recipe, which configs/gpt2.yaml spells
out. The loop is the classic one of GPT-1/2/3 and nanoGPT (the schedule and the optimizer step live in training.py):

    for each step:     lr from the schedule (linear warmup, then cosine decay to a floor, GPT-3 appendix B; or WSD)
                       forward + backward on one or more micro-batches (gradient accumulation)
                       clip the gradient norm to 1 (GPT-3 appendix B), AdamW step (or Muon's: muon.py)
    every log_interval steps:         the loss read back from the device: progress bar (tokens/s, MFU: flops.py),
                                      wandb, the nan check
    every eval_interval steps:        train/val loss over eval_iters batches, val bits per character,
                                      best_checkpoint.tar when val loss improves, curves.png (pictures.py)
    every checkpoint_interval steps:  model_checkpoint.tar (everything needed to resume exactly)

On a GPU nothing in a step waits for the device: the next batch is made (in pinned memory, copied non_blocking) while
the current one computes, and the loss stays a tensor until a log interval reads it (README, "The step on a GPU").

`--resume` picks up model_checkpoint.tar in out_dir: N steps straight and k steps + resume + N-k steps give the
same weights. Under torchrun, each process takes its share of the micro-batches (distributed.py).
Nothing is lost: a fresh run refuses an out_dir that holds checkpoints (--overwrite to start over), what can be
refused is refused before any work (preflight.py), and a nan/inf loss or weight stops the run before it is saved.
Read next: distributed.py, the same loop on several processes; then generate.py, which samples from the
checkpoints written here.
"""
import contextlib
import dataclasses
import math
import os
import sys
import time

import numpy as np
import torch

import data
import gpt2
import pictures
from checkpoint import LanguageModelCheckpoint, load_weights, model_config_from
from config import DEFAULT_RECIPE, ModelConfig, TrainConfig, UserError, load_config, run_main
from device import autocast, check_dtype, choose_precision, describe, resolve_device
from distributed import Distributed
from flops import Speedometer, flops_per_token, peak_flops
from gpt import GPT
from muon import MuonWithAdamW
from preflight import CHECKPOINTS, check_corpus_exists, check_memory, check_out_dir
from sampling import sample_text
from time_budget import TimeBudget
from tokenizer import Tokenizer, TokenizerError
from training import (OptimizerStep, TrainingDiverged, WandbLogger, learning_rate, log_training, make_progress_bar,
                      maybe_compile, resolve_schedule)

# Settings a resumed run may change; anything else would make it a different run.
RESUMABLE = {"max_iters", "lr_decay_iters", "eval_interval", "eval_iters", "checkpoint_interval", "device", "dtype",
             "compile", "wandb", "wandb_project", "sample_tokens", "out_dir", "resume", "overwrite", "log_interval",
             "activation_checkpointing", "peak_flops"}


def settings(argv) -> tuple[ModelConfig, TrainConfig, LanguageModelCheckpoint | None, set]:
    """The run's settings from the command line, or from the checkpoint with --resume; every refusal that needs no
    data and no device happens here, before the processes of a torchrun job meet (main then checks the precision and
    the memory against the device)."""
    argv = sys.argv[1:] if argv is None else argv
    typed = {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}  # --max_iters=5 -> max_iters
    (model_cfg, train_cfg), explicit = load_config(argv, (ModelConfig, TrainConfig), __doc__.splitlines()[0],
                                                   positional="corpus")
    if "config" not in typed and not (train_cfg.resume or train_cfg.init_from):  # a model trained from scratch
        (model_cfg, train_cfg), explicit = load_config(argv, (ModelConfig, TrainConfig), "", positional="corpus",
                                                       default_config=DEFAULT_RECIPE)
    check_out_dir(train_cfg)
    resumed = None
    if train_cfg.resume:
        resumed = LanguageModelCheckpoint.load(os.path.join(train_cfg.out_dir, "model_checkpoint.tar"),
                                               required=LanguageModelCheckpoint.RESUME)
        model_cfg, train_cfg = merge_resumed_config(resumed, train_cfg, explicit, model_cfg)
    else:
        if {"max_iters", "max_minutes"} <= typed:
            raise UserError("give --max_iters (steps) or --max_minutes (a time), not both")
        if "max_iters" in explicit and "max_minutes" not in typed:  # a step count wins over a config file's time
            train_cfg = dataclasses.replace(train_cfg, max_minutes=None)
        if train_cfg.max_minutes is None:  # else main fills the schedule once the steps are timed (TimeBudget)
            train_cfg = resolve_schedule(train_cfg)
    check_corpus_exists(train_cfg.corpus)
    return model_cfg, train_cfg, resumed, explicit


def merge_resumed_config(saved: LanguageModelCheckpoint, flags: TrainConfig, explicit: set,
                         model_flags: ModelConfig):
    """The saved run's settings, with the few a resumed run may change taken from the command line."""
    model_cfg = model_config_from(saved, "the checkpoint")
    try:
        train_cfg = TrainConfig(**saved.train_config)
    except TypeError as e:
        raise UserError(f"the checkpoint's train_config is not one this code reads ({e}); use another checkpoint") \
            from None
    for name in explicit - RESUMABLE:
        source = flags if name in {f.name for f in dataclasses.fields(TrainConfig)} else model_flags
        old = getattr(model_cfg if source is model_flags else train_cfg, name)
        if getattr(source, name) != old:
            raise UserError(f"--{name} differs from the checkpoint's ({old!r}); a resumed run keeps its settings "
                            f"except {', '.join(sorted(RESUMABLE - {'resume'}))}")
    changes = {name: getattr(flags, name) for name in explicit & RESUMABLE | {"resume", "overwrite"}}
    return model_cfg, dataclasses.replace(train_cfg, **changes)


def load_data(model_cfg: ModelConfig, train_cfg: TrainConfig, resumed, explicit: set, dist: Distributed, device):
    """The corpus, its tokenizer and token ids (rank 0 prepares the caches, the others then read them), the model's
    settings with the tokenizer's vocab_size filled in, and GPT-2's model with --init_from (else None)."""
    corpus = data.open_corpus(train_cfg.corpus, train_cfg.text_field)  # a pipe is read once, into a temporary file
    with dist.rank_zero_first():
        pretrained = None
        if resumed:
            tokenizer = Tokenizer.from_json(resumed.tokenizer, source="the checkpoint's tokenizer")
        elif train_cfg.init_from:  # GPT-2's weights, shape and tokenizer (gpt2.py)
            pretrained, tokenizer = gpt2.fine_tuning_start(train_cfg.init_from, model_cfg, explicit)
            model_cfg = pretrained.config
        else:
            tokenizer = data.resolve_tokenizer(train_cfg.tokenizer, corpus)
        tokens = data.load_tokens(corpus, tokenizer, train_cfg.val_fraction, model_cfg.block_size,
                                  quiet=not dist.is_main)
    if model_cfg.vocab_size is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
    elif model_cfg.vocab_size != tokenizer.vocab_size:
        raise UserError(f"--vocab_size={model_cfg.vocab_size} does not match the tokenizer's {tokenizer.vocab_size} "
                        f"tokens; drop --vocab_size to take it from the tokenizer")
    distinct = count_distinct(tokens.train)
    if distinct < 2:
        raise UserError(f"the training text of {corpus} is {distinct} token repeated ({len(tokens.train):,} times); "
                        f"there is nothing to learn. Give a corpus with at least two different "
                        f"{'characters' if tokenizer.kind == 'char' else 'tokens'}")
    check_memory(model_cfg, train_cfg, tokenizer.vocab_size, device)
    return corpus, tokenizer, tokens, model_cfg, pretrained


@torch.no_grad()
def estimate_loss(model, tokens: data.TokenData, cfg: TrainConfig, block_size: int, ctx, device) -> dict:
    """Mean loss over eval_iters fixed batches of each split (the same batches every time: comparable evals)."""
    model.eval()
    losses = {}
    for split, ids in (("train", tokens.train), ("val", tokens.val)):
        total = 0.0
        for i in range(cfg.eval_iters):
            x, y = data.get_batch(ids, cfg.batch_size, block_size, cfg.seed, i, data.EVAL_STREAM)
            with ctx:
                total += model(x.to(device), y.to(device))[1].item()
        losses[split] = total / cfg.eval_iters
    model.train()
    return losses


def count_distinct(ids: np.ndarray) -> int:
    """How many different token ids occur: [3, 3, 7, 3] -> 2."""
    return int(np.count_nonzero(np.bincount(ids)))


def best_val_loss_on_disk(path: str) -> float:
    """The validation loss best_checkpoint.tar was saved with (inf when there is none to keep)."""
    if not os.path.exists(path):
        return float("inf")
    try:
        return float(LanguageModelCheckpoint.load(path, required=("best_val_loss",)).best_val_loss)
    except (UserError, TypeError, ValueError):
        return float("inf")  # unreadable: the next improvement replaces it


def build_optimizer(model: GPT, cfg: TrainConfig):
    """AdamW for every parameter, or with --optimizer=muon, Muon for the blocks' matrices and AdamW for the rest."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon":
        return MuonWithAdamW(model, cfg.muon_learning_rate, cfg.learning_rate, cfg.weight_decay, betas)
    return model.configure_optimizer(cfg.learning_rate, cfg.weight_decay, betas)


class Run:
    """The model, its optimizer and where the run stands (step, best validation loss, what is on disk), built fresh
    or from the checkpoint being resumed; train_step, evaluate and save act on it."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, tokenizer: Tokenizer,
                 tokens: data.TokenData, resumed: LanguageModelCheckpoint | None, dist: Distributed, device,
                 pretrained: GPT | None = None):
        self.model_cfg, self.cfg, self.tokenizer, self.tokens, self.dist = model_cfg, train_cfg, tokenizer, tokens, dist
        self.device = device
        self.dtype, self.precision = choose_precision(train_cfg.dtype, self.device, model_cfg, train_cfg.batch_size)
        self.ctx = autocast(self.device, self.dtype)
        self.peak_flops, self.peak_source = peak_flops(self.device, self.dtype, train_cfg.peak_flops)  # for MFU
        self.micro_steps = dist.my_micro_steps(train_cfg.gradient_accumulation_steps)
        torch.manual_seed(train_cfg.seed)
        self.raw_model = (GPT(model_cfg) if pretrained is None else pretrained).to(self.device)
        self.raw_model.activation_checkpointing = train_cfg.activation_checkpointing
        self.optimizer = build_optimizer(self.raw_model, train_cfg)
        self.stepper = OptimizerStep(self.raw_model, self.optimizer, train_cfg.grad_clip, self.dtype, self.device)
        self.step, self.best_val = 0, float("inf")
        self.budget = None  # --max_minutes: a TimeBudget (time_budget.py), made by main
        self.history = list(resumed.history or []) if resumed else []  # every evaluation: the curves
        self.tokens_per_step = train_cfg.batch_size * model_cfg.block_size * train_cfg.gradient_accumulation_steps
        if resumed:
            self.resume_from(resumed)
        self.saved_step = self.step if resumed else None  # model_checkpoint.tar on disk holds this step
        self.batches = data.training_batches(tokens.train, train_cfg.batch_size, model_cfg.block_size, train_cfg.seed,
                                             self.step, self.micro_steps, self.device)
        self.next_batch = next(self.batches)
        self.compiled = maybe_compile(self.raw_model, train_cfg.compile)
        self.model = dist.wrap(self.compiled)  # DDP under torchrun; evaluation uses `compiled` (rank 0 only)

    def resume_from(self, resumed: LanguageModelCheckpoint):
        load_weights(self.raw_model, resumed.model)
        try:
            self.optimizer.load_state_dict(resumed.optimizer)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"the checkpoint's optimizer state does not fit its model ({e}); use another "
                            f"checkpoint") from None
        self.stepper.load_scaler_state(resumed.scaler)
        self.step, self.best_val = resumed.step, resumed.best_val_loss
        # Killed between writing best_checkpoint.tar and model_checkpoint.tar, the run's best is on disk only.
        self.best_val = min(self.best_val, best_val_loss_on_disk(os.path.join(self.cfg.out_dir, "best_checkpoint.tar")))
        torch.set_rng_state(resumed.rng["torch"])
        if self.step >= self.cfg.max_iters:
            raise UserError(f"the checkpoint is at step {self.step}, already max_iters={self.cfg.max_iters}; "
                            f"pass a larger --max_iters to train on")

    def train_step(self, lr: float) -> torch.Tensor:
        """One optimizer step at learning rate `lr` over this process's micro-batches; returns the mean loss, a tensor
        on the device (reading it would make the CPU wait for the GPU: the caller does so at log intervals only)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups: muon_learning_rate / learning_rate
        loss_sum = torch.zeros((), device=self.device)
        for i in range(len(self.micro_steps)):
            x, y = self.next_batch
            with self.dist.no_sync(self.model, last=i == len(self.micro_steps) - 1), self.ctx:
                _, loss = self.model(x, y)
                self.stepper.backward(loss / len(self.micro_steps))  # DDP averages over processes: over all micros
            loss_sum += loss.detach()
            self.next_batch = next(self.batches)  # made on the CPU while the GPU still runs this micro-step's kernels
        train_loss = self.dist.mean(loss_sum / len(self.micro_steps))
        self.stepper.step(train_loss, self.stop_diverged, self.step)  # a nan loss is noted, read at check_diverged
        self.step += 1
        return train_loss

    def check_diverged(self, weights: bool):
        """Stop if a loss since the last check was nan or inf (noted on the device by the stepper) or, with `weights`,
        if any weight is; before anything is evaluated or saved, and at every log interval."""
        self.stepper.check_diverged(self.stop_diverged)
        if weights and not all(torch.isfinite(p).all() for p in self.raw_model.parameters()):
            self.stop_diverged(f"the weights became nan or inf at step {self.step}")  # the same on every process

    def stop_diverged(self, what: str):
        kept = (f"nothing non-finite was saved: {self.cfg.out_dir}/model_checkpoint.tar (step {self.saved_step}) is "
                f"kept as it was" if self.saved_step is not None else "no checkpoint of this run had been written")
        raise TrainingDiverged(f"{what}; {kept}. Try a lower --learning_rate (now "
                               f"{self.cfg.learning_rate:g}), --grad_clip=1, or --dtype=float32")

    def evaluate(self, lr: float, elapsed: float, say, logger=None):
        """Train and val loss, val bits per character, said in one line; best_checkpoint.tar when val improved."""
        losses = self.dist.evaluate(lambda: estimate_loss(self.compiled, self.tokens, self.cfg,
                                                          self.model_cfg.block_size, self.ctx, self.device))
        if not self.dist.is_main:
            return
        bpc = losses["val"] / math.log(2) / self.tokens.chars_per_token
        improved = losses["val"] < self.best_val
        say(f"step {self.step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, val {bpc:.3f} "
            f"bits/char, {elapsed:.0f}s" + (" (best so far)" if improved else ""))
        self.history.append({"step": self.step, "tokens": self.step * self.tokens_per_step, "train": losses["train"],
                             "val": losses["val"], "bpc": bpc, "lr": lr})
        if logger:
            logger.log({"eval/train_loss": losses["train"], "eval/val_loss": losses["val"],
                        "eval/val_bits_per_char": bpc}, self.step)
        if improved:
            self.best_val = losses["val"]
            self.save("best_checkpoint.tar")

    def save(self, name: str):
        LanguageModelCheckpoint.of(
            self.raw_model, self.tokenizer, train_config=dataclasses.asdict(self.cfg),
            optimizer=self.optimizer.state_dict(), step=self.step, best_val_loss=self.best_val,
            rng={"torch": torch.get_rng_state()}, scaler=self.stepper.scaler_state(), history=self.history,
        ).save(os.path.join(self.cfg.out_dir, name))
        if name == "model_checkpoint.tar":
            self.saved_step = self.step

    def draw_curves(self):
        """out_dir/curves.png of the eval history (pictures.py), drawn after the checkpoints: a failed write draws
        none."""
        pictures.training_curves({self.cfg.out_dir: self.history}, os.path.join(self.cfg.out_dir, "curves.png"),
                             [learning_rate(s, self.cfg) for s in range(self.cfg.max_iters)])


def delete_earlier_run(out_dir: str):
    """--overwrite: the earlier run's checkpoints go before this run writes its own (its best must not outrank
    this run's)."""
    for name in CHECKPOINTS:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))
            print(f"--overwrite: deleted the earlier run's {os.path.join(out_dir, name)}")


def main(argv=None):
    model_cfg, train_cfg, resumed, explicit = settings(argv)
    dist = Distributed.start()
    device = dist.device if dist.enabled else resolve_device(train_cfg.device)
    check_dtype(train_cfg.dtype, device)  # before the corpus is read and tokenized
    check_memory(model_cfg, train_cfg, model_cfg.vocab_size or 1, device)  # the GPU's memory on a GPU, not the host's
    corpus, tokenizer, tokens, model_cfg, pretrained = load_data(model_cfg, train_cfg, resumed, explicit, dist, device)
    run = Run(model_cfg, train_cfg, tokenizer, tokens, resumed, dist, device, pretrained)
    if train_cfg.max_minutes and not resumed:
        run.budget = TimeBudget(run, train_cfg.max_minutes)  # times a few steps, then sets run.cfg's max_iters
        train_cfg = run.cfg
    cfg, out_dir = train_cfg, train_cfg.out_dir
    if dist.is_main:
        print_summary(run, corpus.path, run.precision if cfg.dtype == "auto" else describe(run.dtype))
    logger = WandbLogger(cfg, model_cfg) if cfg.wandb and dist.is_main else None
    if cfg.overwrite and dist.is_main:
        delete_earlier_run(out_dir)

    progress = make_progress_bar(run.step, cfg.max_iters, dist.is_main)
    speed = Speedometer(flops_per_token(run.raw_model), run.peak_flops, dist.world_size)  # tokens/s and MFU
    started, first_step, evaluating = time.perf_counter(), run.step, 0.0  # evaluating: seconds, checkpoints too
    while run.step < cfg.max_iters:
        lr = learning_rate(run.step, cfg)
        loss = run.train_step(lr)  # a tensor on the device, read only at log intervals
        step, last = run.step, run.step == cfg.max_iters
        speed.count(run.tokens_per_step)
        evaluate, save = step % cfg.eval_interval == 0 or last, step % cfg.checkpoint_interval == 0 or last
        if progress:
            progress.update(1)
        if step % cfg.log_interval == 0 or evaluate or save:
            run.check_diverged(weights=evaluate or save)  # waits for the device; before anything is saved
            log_training(progress, logger, step, loss.item(), lr, *speed.read())
        pause = time.perf_counter()
        if evaluate:
            run.evaluate(lr, time.perf_counter() - started, progress.write if progress else print, logger)
        if dist.is_main and save:
            run.save("model_checkpoint.tar")
        if dist.is_main and run.history and run.history[-1]["step"] == step:
            run.draw_curves()
        if evaluate or save:
            speed.restart()  # the time spent evaluating and saving is not training's
            evaluating += time.perf_counter() - pause
        if step % cfg.log_interval == 0 and run.budget and run.budget.follows_pace(run) and not last:
            cfg = run.budget.replan(run, time.perf_counter() - started, evaluating)  # --max_minutes: follow the pace
            if progress:
                progress.total = cfg.max_iters
    if progress:
        progress.close()
    if dist.is_main:
        elapsed = time.perf_counter() - started
        tokens_per_sec = (run.step - first_step) * run.tokens_per_step / elapsed
        print(f"done: {run.step} steps in {elapsed:.0f}s ({tokens_per_sec:,.0f} tokens/s), best val loss "
              f"{run.best_val:.4f}; checkpoints in {out_dir}/")
        if cfg.sample_tokens:
            text = sample_text(run.raw_model, tokenizer, cfg.sample_tokens, run.device, run.ctx, int(tokens.train[0]))
            print("\n--- sample ---\n" + text + "\n--------------")
    if logger:
        logger.finish()
    dist.stop()


def print_summary(run: Run, corpus: str, precision: str):
    """What is about to happen: the model's size, the data, tokens per step, the schedule, device and precision."""
    model, model_cfg, cfg, tokenizer, tokens, dist = run.raw_model, run.model_cfg, run.cfg, run.tokenizer, \
        run.tokens, run.dist
    print(f"model: {model.num_parameters():,} parameters ({model.num_parameters(False):,} without embeddings), "
          f"{model_cfg.num_of_layers} layers x {model_cfg.embedding_dim} wide, {model_cfg.num_of_heads} heads, "
          f"context {model_cfg.block_size}, {model_cfg.attention_backend} attention")
    print(f"data: {corpus}, {tokenizer.kind} tokenizer ({tokenizer.vocab_size} tokens), "
          f"{len(tokens.train):,} train / {len(tokens.val):,} val tokens")
    accumulation, scope = "", ""
    if cfg.gradient_accumulation_steps > 1:
        processes = f" over {dist.world_size} processes" if dist.enabled else ""
        accumulation = (f" ({cfg.gradient_accumulation_steps} micro-batches of {cfg.batch_size} "
                        f"accumulated{processes})")
    if dist.enabled:
        scope = "global "
    muon = f", muon lr {cfg.muon_learning_rate:g} for the blocks' matrices" if cfg.optimizer == "muon" else ""
    print(f"training: {run.tokens_per_step:,} {scope}tokens per step{accumulation}, steps {run.step} -> "
          f"{cfg.max_iters}, lr {cfg.learning_rate:g}{muon} (warmup {cfg.warmup_iters}, {cfg.schedule} to "
          f"{cfg.min_lr:g} at {cfg.lr_decay_iters or cfg.max_iters}), device {run.device}")
    print(f"precision: {precision}")
    if run.budget:
        print(f"time: {run.budget.summary}")
    peak = f"{run.peak_flops / 1e12:.3g} TFLOP/s" if run.peak_flops else "unknown"
    print(f"speed: 6N + 12LTC = {flops_per_token(model) / 1e6:,.1f} MFLOPs per token (PaLM appendix B); peak per "
          f"device {peak} ({run.peak_source}), for MFU" +
          (", activation checkpointing on" if cfg.activation_checkpointing else ""))


if __name__ == "__main__":
    run_main(main, user_errors=(TokenizerError,))
