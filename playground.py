"""Train a GPT on a text file: `python playground.py corpus.txt --embedding_dim=384 --num_of_layers=4 ...`.

With no corpus it trains on the built-in Shakespeare (data.py) and prints a sample when done. The loop is the
classic one of GPT-1/2/3 and nanoGPT:

    for each step:     lr from the schedule (linear warmup, then cosine decay to a floor; GPT-3 appendix B)
                       forward + backward on one or more micro-batches (gradient accumulation)
                       clip the gradient norm to 1 (GPT-3 appendix B), AdamW step
    every eval_interval steps:        train/val loss over eval_iters batches, val bits per character,
                                      best_checkpoint.tar when val loss improves, curves.png (plot.py)
    every checkpoint_interval steps:  model_checkpoint.tar (everything needed to resume exactly)

`--resume` picks up model_checkpoint.tar in out_dir: N steps straight and k steps + resume + N-k steps give the
same weights. Under torchrun, each process takes its share of the micro-batches (distributed.py).
Nothing is lost: a fresh run refuses an out_dir that holds checkpoints (--overwrite to start over), what can be
refused is refused before any work (preflight.py), and a nan/inf loss or weight stops the run before it is saved.
Read next: generate.py, which samples from the checkpoints written here.
"""
import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

import data
import gpt2
import plot
from checkpoint import load_checkpoint, load_weights, model_config_from, save_checkpoint
from config import ModelConfig, TrainConfig, UserError, load_config, run_main
from device import autocast, choose_precision, describe, resolve_device
from distributed import Distributed
from gpt import GPT
from preflight import CHECKPOINTS, check_corpus_exists, check_memory, check_out_dir
from tokenizer import Tokenizer, TokenizerError

EVAL_STREAM = 10 ** 6  # micro-step index reserved for evaluation batches, far from any training micro-step
# Settings a resumed run may change; anything else would make it a different run.
RESUMABLE = {"max_iters", "lr_decay_iters", "eval_interval", "eval_iters", "checkpoint_interval", "device", "dtype",
             "compile", "wandb", "wandb_project", "sample_tokens", "out_dir", "resume", "overwrite"}
# What resuming reads from model_checkpoint.tar.
RESUME_KEYS = ("model", "model_config", "tokenizer", "optimizer", "train_config", "step", "best_val_loss", "rng")


class TrainingDiverged(UserError):
    pass


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from lr/(warmup+1) to lr, then cosine decay to min_lr at lr_decay_iters, then flat.

    Warmup (GPT-1 section 4.1) keeps Adam's first, badly estimated updates small; the cosine (GPT-3 appendix B)
    anneals to a floor of lr/10.
    """
    warmup, decay_end = cfg.warmup_iters, cfg.lr_decay_iters or cfg.max_iters
    if step < warmup:
        return cfg.learning_rate * (step + 1) / (warmup + 1)
    if step >= decay_end:
        return cfg.min_lr
    progress = (step - warmup) / max(1, decay_end - warmup)  # 0 -> 1
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def resolve_schedule(cfg: TrainConfig) -> TrainConfig:
    """Fill the schedule's defaults: warmup = 5% of max_iters (at most 2000, nanoGPT's long-run value); floor lr/10.

    lr_decay_iters stays None (meaning max_iters) so that extending a run with --max_iters stretches the cosine.
    """
    warmup = cfg.warmup_iters if cfg.warmup_iters is not None else min(2000, cfg.max_iters // 20)
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10
    return dataclasses.replace(cfg, warmup_iters=warmup, min_lr=min_lr)


def merge_resumed_config(saved: dict, flags: TrainConfig, explicit: set, model_flags: ModelConfig):
    """The saved run's settings, with the few a resumed run may change taken from the command line."""
    model_cfg = model_config_from(saved, "the checkpoint")
    try:
        train_cfg = TrainConfig(**saved["train_config"])
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


@torch.no_grad()
def estimate_loss(model, tokens: data.TokenData, cfg: TrainConfig, block_size: int, ctx, device) -> dict:
    """Mean loss over eval_iters fixed batches of each split (the same batches every time: comparable evals)."""
    model.eval()
    losses = {}
    for split, ids in (("train", tokens.train), ("val", tokens.val)):
        total = 0.0
        for i in range(cfg.eval_iters):
            x, y = data.get_batch(ids, cfg.batch_size, block_size, cfg.seed, i, EVAL_STREAM)
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
        return float(load_checkpoint(path, required=("best_val_loss",))["best_val_loss"])
    except (UserError, TypeError, ValueError):
        return float("inf")  # unreadable: the next improvement replaces it


def main(argv=None):
    (model_cfg, train_cfg), explicit = load_config(sys.argv[1:] if argv is None else argv, (ModelConfig, TrainConfig),
                                                   __doc__.splitlines()[0], positional="corpus")
    # ---- everything that can be refused is refused here, before the processes of a torchrun job meet
    out_dir, resume_state = train_cfg.out_dir, None
    check_out_dir(train_cfg)
    if train_cfg.resume:
        resume_state = load_checkpoint(os.path.join(out_dir, "model_checkpoint.tar"), required=RESUME_KEYS)
        model_cfg, train_cfg = merge_resumed_config(resume_state, train_cfg, explicit, model_cfg)
    else:
        train_cfg = resolve_schedule(train_cfg)
    check_corpus_exists(train_cfg.corpus)
    check_memory(model_cfg, train_cfg, model_cfg.vocab_size or 1)
    dist = Distributed.start()
    device = dist.device if dist.enabled else resolve_device(train_cfg.device)

    # ---- data and tokenizer (rank 0 prepares the caches, the others then read them)
    corpus = data.open_corpus(train_cfg.corpus, train_cfg.text_field)  # a pipe is read once, into a temporary file
    with dist.rank_zero_first():
        pretrained = None
        if resume_state:
            tokenizer = Tokenizer.from_json(resume_state["tokenizer"], source="the checkpoint's tokenizer")
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
    check_memory(model_cfg, train_cfg, tokenizer.vocab_size)
    micro_steps = dist.my_micro_steps(train_cfg.gradient_accumulation_steps)
    dtype, precision_note = choose_precision(train_cfg.dtype, device, model_cfg, train_cfg.batch_size)
    ctx = autocast(device, dtype)

    # ---- model and optimizer
    torch.manual_seed(train_cfg.seed)
    raw_model = (GPT(model_cfg) if pretrained is None else pretrained).to(device)
    optimizer = raw_model.configure_optimizer(train_cfg.learning_rate, train_cfg.weight_decay,
                                              (train_cfg.beta1, train_cfg.beta2))
    step, best_val = 0, float("inf")
    history = list(resume_state.get("history", [])) if resume_state else []  # every evaluation: the curves
    if resume_state:
        load_weights(raw_model, resume_state["model"])
        try:
            optimizer.load_state_dict(resume_state["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"the checkpoint's optimizer state does not fit its model ({e}); use another "
                            f"checkpoint") from None
        step, best_val = resume_state["step"], resume_state["best_val_loss"]
        # Killed between writing best_checkpoint.tar and model_checkpoint.tar, the run's best is on disk only.
        best_val = min(best_val, best_val_loss_on_disk(os.path.join(out_dir, "best_checkpoint.tar")))
        torch.set_rng_state(resume_state["rng"]["torch"])
        if step >= train_cfg.max_iters:
            raise UserError(f"the checkpoint is at step {step}, already max_iters={train_cfg.max_iters}; "
                            f"pass a larger --max_iters to train on")
    compiled = maybe_compile(raw_model, train_cfg.compile)
    model = dist.wrap(compiled)  # the DDP wrapper when under torchrun; evaluation uses `compiled` (rank 0 only)

    tokens_per_step = train_cfg.batch_size * model_cfg.block_size * train_cfg.gradient_accumulation_steps
    if dist.is_main:
        print_summary(raw_model, model_cfg, train_cfg, tokenizer, tokens, corpus.path, step, dist, device,
                      precision_note if train_cfg.dtype == "auto" else describe(dtype))
    logger = WandbLogger(train_cfg, model_cfg) if train_cfg.wandb and dist.is_main else None

    saved_step = step if resume_state else None  # model_checkpoint.tar on disk holds this step

    def stop_diverged(what: str):
        kept = (f"nothing non-finite was saved: {out_dir}/model_checkpoint.tar (step {saved_step}) is kept as it was"
                if saved_step is not None else "no checkpoint of this run had been written")
        raise TrainingDiverged(f"{what} at step {step}; {kept}. Try a lower --learning_rate (now "
                               f"{train_cfg.learning_rate:g}), --grad_clip=1, or --dtype=float32")

    if train_cfg.overwrite and dist.is_main:
        for name in CHECKPOINTS:  # the earlier run's files go now: its best must not outrank this run's
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, name))
                print(f"--overwrite: deleted the earlier run's {os.path.join(out_dir, name)}")

    def write_checkpoint(name):
        save_checkpoint(os.path.join(out_dir, name), {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "model_config": dataclasses.asdict(model_cfg), "train_config": dataclasses.asdict(train_cfg),
            "tokenizer": tokenizer.to_json(), "step": step, "best_val_loss": best_val, "history": history,
            "rng": {"torch": torch.get_rng_state()}})

    # ---- the loop
    progress = make_progress_bar(step, train_cfg.max_iters, dist.is_main)
    started, tokens_seen = time.perf_counter(), 0
    while step < train_cfg.max_iters:
        lr = learning_rate(step, train_cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for i, micro in enumerate(micro_steps):
            x, y = data.get_batch(tokens.train, train_cfg.batch_size, model_cfg.block_size, train_cfg.seed,
                                  step, micro)
            with dist.no_sync(model, last=i == len(micro_steps) - 1), ctx:
                _, loss = model(x.to(device), y.to(device))
                (loss / len(micro_steps)).backward()  # DDP then averages over processes: the mean over all micros
            loss_sum += loss.detach()
        train_loss = dist.mean(loss_sum / len(micro_steps)).item()
        if not math.isfinite(train_loss):
            stop_diverged(f"loss became {train_loss}")
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        tokens_per_sec = tokens_seen / (time.perf_counter() - started)
        if progress:
            progress.update(1)
            progress.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}",
                                 refresh=False)
        if logger and (step % 10 == 0 or step == train_cfg.max_iters):
            logger.log({"train/loss": train_loss, "lr": lr, "tokens_per_sec": tokens_per_sec}, step)

        last = step == train_cfg.max_iters
        checkpoint_due = last or step % train_cfg.eval_interval == 0 or step % train_cfg.checkpoint_interval == 0
        if checkpoint_due and not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            stop_diverged("the weights became nan or inf")  # every process sees the same weights, and stops here
        if step % train_cfg.eval_interval == 0 or last:
            losses = dist.evaluate(
                lambda: estimate_loss(compiled, tokens, train_cfg, model_cfg.block_size, ctx, device))
            if dist.is_main:
                bpc = losses["val"] / math.log(2) / tokens.chars_per_token
                improved = losses["val"] < best_val
                message = (f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                           f"val {bpc:.3f} bits/char, {time.perf_counter() - started:.0f}s")
                (progress.write if progress else print)(message + (" (best so far)" if improved else ""))
                history.append({"step": step, "tokens": step * tokens_per_step, "train": losses["train"],
                                "val": losses["val"], "bpc": bpc, "lr": lr})
                if logger:
                    logger.log({"eval/train_loss": losses["train"], "eval/val_loss": losses["val"],
                                "eval/val_bits_per_char": bpc}, step)
                if improved:
                    best_val = losses["val"]
                    write_checkpoint("best_checkpoint.tar")
        if dist.is_main and (step % train_cfg.checkpoint_interval == 0 or last):
            write_checkpoint("model_checkpoint.tar")
            saved_step = step
        if dist.is_main and history and history[-1]["step"] == step:  # after the writes: a failed one draws nothing
            plot.training_curves({out_dir: history}, os.path.join(out_dir, "curves.png"),
                                 [learning_rate(s, train_cfg) for s in range(train_cfg.max_iters)])
    if progress:
        progress.close()
    if dist.is_main:
        elapsed = time.perf_counter() - started
        print(f"done: {step} steps in {elapsed:.0f}s ({tokens_seen / elapsed:,.0f} tokens/s), best val loss "
              f"{best_val:.4f}; checkpoints in {out_dir}/")
        if train_cfg.sample_tokens:
            print_sample(raw_model, tokenizer, train_cfg.sample_tokens, device, ctx, first_id=int(tokens.train[0]))
    if logger:
        logger.finish()
    dist.stop()


def print_summary(model, model_cfg, train_cfg, tokenizer, tokens, corpus, step, dist, device, precision):
    """What is about to happen: the model's size, the data, tokens per step, the schedule, device and precision."""
    print(f"model: {model.num_parameters():,} parameters ({model.num_parameters(False):,} without embeddings), "
          f"{model_cfg.num_of_layers} layers x {model_cfg.embedding_dim} wide, {model_cfg.num_of_heads} heads, "
          f"context {model_cfg.block_size}, {model_cfg.attention_backend} attention")
    print(f"data: {corpus}, {tokenizer.kind} tokenizer ({tokenizer.vocab_size} tokens), "
          f"{len(tokens.train):,} train / {len(tokens.val):,} val tokens")
    accumulation, scope = "", ""
    if train_cfg.gradient_accumulation_steps > 1:
        processes = f" over {dist.world_size} processes" if dist.enabled else ""
        accumulation = (f" ({train_cfg.gradient_accumulation_steps} micro-batches of {train_cfg.batch_size} "
                        f"accumulated{processes})")
    if dist.enabled:
        scope = "global "
    tokens_per_step = train_cfg.batch_size * model_cfg.block_size * train_cfg.gradient_accumulation_steps
    print(f"training: {tokens_per_step:,} {scope}tokens per step{accumulation}, steps {step} -> "
          f"{train_cfg.max_iters}, lr {train_cfg.learning_rate:g} (warmup {train_cfg.warmup_iters}, cosine to "
          f"{train_cfg.min_lr:g} at {train_cfg.lr_decay_iters or train_cfg.max_iters}), device {device}")
    print(f"precision: {precision}")


def maybe_compile(model, compile_requested: bool):
    if not compile_requested:
        return model
    try:
        return torch.compile(model)
    except Exception as e:  # no compiler toolchain, unsupported platform ...
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); training without it")
        return model


def make_progress_bar(start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    interactive = sys.stdout.isatty()  # in a log file, redraw rarely instead of twice a second
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stdout,
                mininterval=0.5 if interactive else 30.0)


def sample_start(tokenizer: Tokenizer, first_id: int) -> int:
    """The token a sample starts from: end-of-text, else a newline, else (a corpus without one) `first_id`."""
    if tokenizer.eot_id is not None:
        return tokenizer.eot_id
    try:
        newline = tokenizer.encode("\n")
    except TokenizerError:  # a char tokenizer of a corpus with no newline
        newline = []
    return newline[0] if newline else first_id


def print_sample(model, tokenizer: Tokenizer, num_tokens: int, device, ctx, first_id: int = 0):
    """A few hundred tokens from the trained model, started from an end-of-text or newline token (or `first_id`, the
    corpus's first token, when the vocabulary has neither)."""
    start = sample_start(tokenizer, first_id)
    model.eval()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one token at a time is too little work to share: a second thread only waits
    try:
        with ctx:
            ids = model.generate(torch.tensor([[start]], device=device), num_tokens, temperature=0.8)
    finally:
        torch.set_num_threads(threads)
    print("\n--- sample ---\n" + tokenizer.decode(ids[0, 1:].tolist()).strip() + "\n--------------")


class WandbLogger:
    """Weights & Biases logging, imported only when asked for; offline (no account, no network) unless
    WANDB_MODE says otherwise. `wandb sync out/wandb/...` uploads an offline run later."""

    def __init__(self, train_cfg: TrainConfig, model_cfg: ModelConfig):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        os.makedirs(train_cfg.out_dir, exist_ok=True)
        self.run = wandb.init(project=train_cfg.wandb_project, dir=train_cfg.out_dir,
                              config={**dataclasses.asdict(model_cfg), **dataclasses.asdict(train_cfg)})

    def log(self, metrics: dict, step: int):
        self.run.log(metrics, step=step)

    def finish(self):
        self.run.finish()


if __name__ == "__main__":
    run_main(main, user_errors=(TokenizerError,))
