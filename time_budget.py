"""Training for a time instead of a number of steps (--max_minutes): the same five minutes on any machine.

A learning-rate schedule needs the run's length in steps before its first step: warmup is 5% of it, and the decay
ends with it. So a time budget starts by measuring. TimeBudget times a few training steps and one evaluation (its
forward passes, a checkpoint's write, the curves' drawing), plans the most steps that fit with their evaluations
(training.steps_in_time), fills the schedule from that, and undoes the timed steps: the run is exactly the one
`--max_iters=N` trains, and resumes like it.

A shared machine's pace drifts by 10-20% over minutes, more than a few timed steps can foresee. With the
warmup-stable-decay schedule the plan is therefore re-sized at every log interval to the pace measured so far,
until the decay begins (training.replan): the peak learning rate does not depend on the step count, so the steps
already taken belong to the new plan too, and the run is exactly `--max_iters=N --warmup_iters=W`, N its last plan.
The cosine depends on the step count from the first step: a cosine run keeps its first plan.

`run` below is playground.Run: the model, optimizer, batches and settings of one training run.
Read next: playground.py, whose loop calls it; then distributed.py.
"""
import copy
import dataclasses
import io
import os
import tempfile
import time

import torch

import data
import pictures
from config import TrainConfig
from training import OptimizerStep, decay_begins, replan, resolve_schedule, steps_in_time

UNTIMED_STEPS, TIMED_STEPS = 2, 10  # training steps (and evaluation passes) run, then timed


class TimeBudget:
    """The plan of a run with --max_minutes: made at the start (it sets run.cfg), re-sized by replan as the run
    goes while follows_pace says so."""

    def __init__(self, run, minutes: float):
        self.seconds = 60 * minutes
        per_step, self.per_eval = undoing_the_steps(run, lambda: time_step_and_evaluation(run))
        steps = steps_in_time(self.seconds, per_step, self.per_eval, run.cfg.eval_interval)
        run.cfg = resolve_schedule(dataclasses.replace(run.cfg, max_iters=steps))  # the warmup is fixed from here on
        self.summary = (f"{minutes:g} minutes = {steps:,} steps here ({per_step:.3g} s a step, {self.per_eval:.3g} s "
                        f"an evaluation, timed)" + (", re-sized to the pace as it goes until the decay begins"
                                                    if self.follows_pace(run) else ""))

    def follows_pace(self, run) -> bool:
        """Whether the plan is still re-sized as the run goes: with wsd (and its decay ending at max_iters), until
        the decay begins."""
        return run.cfg.schedule == "wsd" and not run.cfg.lr_decay_iters and run.step < decay_begins(run.cfg)

    def replan(self, run, seconds_used: float, seconds_evaluating: float) -> TrainConfig:
        """run.cfg with max_iters re-sized (training.replan) from the pace of the steps so far, `seconds_used` of the
        budget gone, `seconds_evaluating` of them in evaluations and checkpoints; the same on every process."""
        evaluations = run.step // run.cfg.eval_interval
        per_eval = seconds_evaluating / evaluations if evaluations else self.per_eval  # measured, once there is one
        figures = torch.tensor([seconds_used, (seconds_used - seconds_evaluating) / run.step, per_eval],
                               device=run.device)
        seconds_used, per_step, per_eval = run.dist.mean(figures).tolist()
        run.cfg = replan(run.cfg, run.step, self.seconds - seconds_used, per_step, per_eval)
        return run.cfg


def time_step_and_evaluation(run) -> tuple[float, float]:
    """Seconds per training step (at lr 0) and per evaluation: its 2 x eval_iters forward passes, then a
    checkpoint's write and the curves' drawing. The same figures on every process."""
    for _ in range(UNTIMED_STEPS):  # the first steps allocate (and compile, with --compile)
        run.train_step(0.0).item()
    per_step = median_seconds(lambda i: run.train_step(0.0), TIMED_STEPS)

    def val_loss(i: int) -> torch.Tensor:  # one of an evaluation's forward passes
        x, y = data.get_batch(run.tokens.val, run.cfg.batch_size, run.model_cfg.block_size, run.cfg.seed, i,
                              data.EVAL_STREAM)
        return run.compiled(x.to(run.device), y.to(run.device))[1]

    with torch.no_grad(), run.ctx:
        run.compiled.eval()
        per_eval = 2 * run.cfg.eval_iters * median_seconds(val_loss, min(TIMED_STEPS, run.cfg.eval_iters))
        run.compiled.train()
    record = {"step": 1, "tokens": 1, "train": 1.0, "val": 1.0, "bpc": 1.0, "lr": run.cfg.learning_rate}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(2):  # the first drawing imports matplotlib: only the second is timed
            started = time.perf_counter()
            torch.save({"model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict()}, io.BytesIO())
            pictures.training_curves({"timing": [record]}, os.path.join(scratch, "c.png"), [record["lr"]] * 2)
    per_eval += time.perf_counter() - started
    return tuple(run.dist.mean(torch.tensor([per_step, per_eval], device=run.device)).tolist())


def undoing_the_steps(run, work):
    """work()'s result, with every trace of the training steps it took undone: the weights (kept on the CPU
    meanwhile), the optimizer state, the random states (the CPU's and the GPU's), the step and the data position."""
    weights = {name: t.detach().to("cpu", copy=True) for name, t in run.raw_model.state_dict().items()}
    optimizer = copy.deepcopy(run.optimizer.state_dict())
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        result = work()
    run.raw_model.load_state_dict(weights)  # copies into the same parameters: the optimizer still holds them
    run.optimizer.load_state_dict(optimizer)
    run.stepper = OptimizerStep(run.raw_model, run.optimizer, run.cfg.grad_clip, run.dtype, run.device)
    run.step = 0
    run.batches = data.training_batches(run.tokens.train, run.cfg.batch_size, run.model_cfg.block_size, run.cfg.seed,
                                        0, run.micro_steps, run.device)
    run.next_batch = next(run.batches)
    return result


def median_seconds(work, times: int) -> float:
    """The median time of work(0), ..., work(times - 1), each returning a tensor (read, so the device has finished):
    a median, so that one call slowed by another job on the machine does not count."""
    seconds = []
    for i in range(times):
        started = time.perf_counter()
        work(i).item()
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)[times // 2]
