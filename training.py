"""What every training loop here shares (playground.py pre-trains, classify.py fine-tunes), as nanochat's common.py.

    learning_rate(step, cfg)    pre-training: warmup, then cosine decay to a floor (GPT-1 section 4.1, GPT-3 appendix
                                B), or warmup-stable-decay (--schedule=wsd; Hu et al. 2024, Hagele et al. 2024)
    lr_factor(step, total)      warmup then linear decay to 0 (GPT-1 section 4.1, fine-tuning)
    OptimizerStep               backward with float16 loss scaling, the nan/inf guard (without a wait per step on a
                                GPU), gradient clipping, AdamW's step
    make_progress_bar, log_training, WandbLogger, maybe_compile

Loss scaling (Micikevicius et al. 2018): float16 cannot hold gradients below 6e-8, so the loss is multiplied by a
large factor before backward and the gradients divided by it before the step; torch's GradScaler lowers the factor
(and skips that step) when a gradient overflows, and raises it again after a run of good steps. bfloat16 and float32
need none: there the scaler is off and changes nothing.
Read next: muon.py, the optimizer --optimizer=muon uses; then playground.py.
"""
import dataclasses
import math
import os
import sys
import warnings

import torch

from config import ModelConfig, TrainConfig, UserError

FINE_TUNING_WARMUP = 0.1  # of all steps: linear warmup, then linear decay to 0 (GPT-1 section 4.1 fine-tuning)


class TrainingDiverged(UserError):
    pass


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The lr of optimizer step `step`: linear warmup from lr/(warmup+1) to lr, then cfg.schedule's decay (cosine or
    wsd) down to min_lr at lr_decay_iters, then min_lr.

    Warmup (GPT-1 section 4.1) keeps Adam's first, badly estimated updates small; the cosine (GPT-3 appendix B)
    anneals to a floor of lr/10. The decay reaches min_lr at lr_decay_iters, inside the run only when
    lr_decay_iters < max_iters (by default they are equal, and the last step's lr is just above min_lr).
    """
    warmup, decay_end = cfg.warmup_iters, cfg.lr_decay_iters or cfg.max_iters
    if step < warmup:
        return cfg.learning_rate * (step + 1) / (warmup + 1)
    if step >= decay_end:
        return cfg.min_lr
    if cfg.schedule == "wsd":
        return warmup_stable_decay(step, decay_end, cfg)
    progress = (step - warmup) / max(1, decay_end - warmup)  # 0 -> 1
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def warmup_stable_decay(step: int, decay_end: int, cfg: TrainConfig) -> float:
    """After warmup: the peak lr, held, then a straight line down to min_lr over the last decay_fraction of the
    steps (WSD: Hu et al. 2024, MiniCPM section 4; Hagele et al. 2024, "Scaling Laws and Compute-Optimal Training
    Beyond Fixed Training Durations"). The long constant stretch means a run can be extended, or a checkpoint
    from its middle cooled down, without starting over; the short cooldown gives most of the cosine's final gain.

    The line runs from the peak at step decay_end - decay_steps to min_lr at decay_end, as the cosine does. With
    learning_rate 1, min_lr 0.1 and 20 steps at decay_fraction 0.2: 1.0 up to step 16, then 0.775, 0.55 and 0.325 at
    steps 17, 18 and 19; min_lr would come at step 20.
    """
    decay_steps = round(cfg.decay_fraction * decay_end)
    remaining = decay_end - step  # 1 at the last step
    if remaining >= decay_steps:
        return cfg.learning_rate
    return cfg.min_lr + (cfg.learning_rate - cfg.min_lr) * remaining / decay_steps


def resolve_schedule(cfg: TrainConfig) -> TrainConfig:
    """Fill the schedule's defaults: warmup = 5% of max_iters (at most 2000, nanoGPT's long-run value); floor lr/10.

    lr_decay_iters stays None (meaning max_iters) so that extending a run with --max_iters stretches the cosine.
    """
    warmup = cfg.warmup_iters if cfg.warmup_iters is not None else min(2000, cfg.max_iters // 20)
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10
    return dataclasses.replace(cfg, warmup_iters=warmup, min_lr=min_lr)


def steps_in_time(seconds: float, per_step: float, per_eval: float, eval_interval: int, start: int = 0) -> int:
    """How many steps after step `start` fit in `seconds` (--max_minutes) when each takes per_step seconds and an
    evaluation, per_eval, runs every eval_interval steps and once at the end: the most steps n (at least 1) whose
    time, n * per_step + (evaluations in steps start + 1 ... start + n) * per_eval, is within `seconds`.
    steps_in_time(60, 0.5, 5, 50) = 100: 100 steps take 50 s, their evaluations at steps 50 and 100 take 10 s."""
    per_step = max(per_step, 1e-9)  # a pace measured as zero (or less, from a rough evaluation time) is not

    def time_of(n: int) -> float:
        evaluations = -(-(start + n) // eval_interval) - start // eval_interval  # ceil(end / interval): the last too
        return n * per_step + evaluations * per_eval

    n = max(1, int(seconds / (per_step + per_eval / eval_interval)))  # about right; then exact
    while n > 1 and time_of(n) > seconds:
        n -= 1
    while time_of(n + 1) <= seconds:
        n += 1
    return n


def replan(cfg: TrainConfig, step: int, seconds_left: float, per_step: float, per_eval: float) -> TrainConfig:
    """--max_minutes with the wsd schedule: max_iters re-sized at step `step` so that the run ends as the time runs
    out at the pace measured so far. Until its decay begins, wsd's learning rate is the peak whatever max_iters is,
    so the steps already taken are those of the new plan too: the run stays exactly the one `--max_iters=N
    --warmup_iters=W` trains. The new decay may begin at `step` at the earliest, never in the past."""
    plan = dataclasses.replace(cfg, max_iters=step + steps_in_time(seconds_left, per_step, per_eval,
                                                                    cfg.eval_interval, start=step))
    while decay_begins(plan) < step:  # the decay would have begun already
        plan = dataclasses.replace(plan, max_iters=plan.max_iters + 1)
    return plan


def decay_begins(cfg: TrainConfig) -> int:
    """The last step of wsd's peak learning rate: from the next one on, it falls (warmup_stable_decay)."""
    decay_end = cfg.lr_decay_iters or cfg.max_iters
    return decay_end - round(cfg.decay_fraction * decay_end)


def lr_factor(step: int, total: int) -> float:
    """Linear warmup over the first FINE_TUNING_WARMUP of the steps, then linear decay to 0 (GPT-1 section 4.1).
    Multiplies each parameter group's peak learning rate: lr_factor(0, 100) = 0.1, (10, 100) = 1.0, (100, 100) = 0."""
    warmup = max(1, int(total * FINE_TUNING_WARMUP))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


class OptimizerStep:
    """backward(loss) for each (micro-)batch, then step(loss, stop): the one optimizer step of every loop.

    step() guards against a nan/inf loss by calling stop(what) (which raises, with the caller's advice), unscales and
    clips the gradients' global norm to grad_clip (GPT-3 appendix B; 0 = off), steps the optimizer (GradScaler skips
    a step whose float16 gradients overflowed) and clears the gradients.

    The guard without a wait per step. A loss given as a number is checked at once, before the step. But turning a
    GPU tensor into a number (`.item()`) makes the CPU wait until every queued kernel has run, and then the GPU idles
    while the CPU queues the next step. So a loss given as a tensor is only noted, on the device: two tiny kernels
    keep the first non-finite loss and its step, and nothing waits. check_diverged(stop) reads the note (one wait);
    playground.py calls it at every log interval and before anything is evaluated or saved. A diverged run stops at
    most log_interval steps late, its weights by then nan as well, but nothing non-finite is ever written.
    (In float16, GradScaler must know whether the gradients overflowed: with fused AdamW, CUDA's, it hands that flag
    to the optimizer's kernel and nothing waits; with foreach AdamW it reads it, one wait a step.)"""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                 dtype: torch.dtype, device: torch.device):
        self.parameters, self.optimizer, self.grad_clip = list(model.parameters()), optimizer, grad_clip
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)  # -1: every loss so far finite
        self.first_bad_loss = torch.zeros((), device=device)

    def backward(self, loss: torch.Tensor):
        self.scaler.scale(loss).backward()  # loss * scale in float16; the loss itself otherwise

    def step(self, loss: float | torch.Tensor, stop, step: int = 0):
        """loss: this step's loss, a number (checked now) or a tensor (noted as the loss of step `step`)."""
        if isinstance(loss, torch.Tensor):
            first = ~torch.isfinite(loss) & (self.first_bad_step < 0)  # on the device, no wait
            self.first_bad_step = torch.where(first, step, self.first_bad_step)
            self.first_bad_loss = torch.where(first, loss.float(), self.first_bad_loss)
        elif not math.isfinite(loss):
            stop(f"loss became {loss}")
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def check_diverged(self, stop):
        """stop("loss became nan at step s") if a loss noted by step() was not finite (waits for the device)."""
        step = int(self.first_bad_step)
        if step >= 0:
            stop(f"loss became {self.first_bad_loss.item()} at step {step}")

    def scaler_state(self) -> dict | None:
        """What a checkpoint keeps so that a resumed float16 run scales as the uninterrupted one would."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load_scaler_state(self, state: dict | None):
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


def maybe_compile(model, compile_requested: bool):
    """torch.compile(model) when asked for; the model itself (with a warning) when the compiler is unavailable."""
    if not compile_requested:
        return model
    try:
        return torch.compile(model)
    except Exception as e:  # no compiler toolchain, unsupported platform ...
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); training without it")
        return model


def log_training(progress, logger, step: int, loss: float, lr: float, tokens_per_sec: float, mfu: float | None):
    """A log interval's figures: on the progress bar, and to wandb (train/loss, lr, tokens_per_sec, mfu)."""
    shown = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok_s": f"{tokens_per_sec:,.0f}"}
    metrics = {"train/loss": loss, "lr": lr, "tokens_per_sec": tokens_per_sec}
    if mfu is not None:
        shown["mfu"], metrics["mfu"] = f"{100 * mfu:.1f}%", mfu
    if progress:
        progress.set_postfix(shown, refresh=False)
    if logger:
        logger.log(metrics, step)


def make_progress_bar(start: int, total: int, enabled: bool):
    """A tqdm bar from `start` to `total` steps (None when not `enabled`: quiet runs, other torchrun processes)."""
    if not enabled:
        return None
    from tqdm import tqdm

    interactive = sys.stdout.isatty()  # in a log file, redraw rarely instead of twice a second
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stdout,
                mininterval=0.5 if interactive else 30.0)


class WandbLogger:
    """Weights & Biases logging, imported only when asked for; offline (no account, no network) unless
    WANDB_MODE says otherwise. `wandb sync out/wandb/...` uploads an offline run later.

    train_cfg: any settings dataclass with out_dir and wandb_project (TrainConfig, classify's config)."""

    def __init__(self, train_cfg, model_cfg: ModelConfig):
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
