"""The fine-tuning loop of classify.py: a budget of optimizer steps, evaluations, the best kept, early stopping.

    for step in 1..max_steps:   lr = peak * (linear warmup over 10% of the steps, then linear decay to 0)
                                loss = L2 + lm_loss_weight * L1     (GPT-1 section 3.2, on the same batch)
                                backward, clip the gradient norm, AdamW step
        every eval_interval steps (and at the end):
                                validation loss and accuracy; keep a copy of the weights if they are the best so far
                                (the probe, step 0, is the first candidate); stop after `patience` evaluations
                                without improvement

A budget in steps, not epochs: 300 steps are ten passes over 1,000 texts and two over 5,000, so small data sets get
enough updates, and the best evaluation, not the last, is what is kept: on small data a fine-tune overfits.

Shape letters: B batch, T time (tokens), K num_classes.
Read next: classifier_baselines.py (what the fine-tune must beat).
"""
import time

import torch
import torch.nn.functional as F

import classifier_data as cd
from config import UserError
from training import OptimizerStep, lr_factor, make_progress_bar

MIN_LOSS_GAIN = 1e-3  # nats: at equal accuracy, a smaller drop in validation loss is not an improvement


def make_optimizer(model, cfg) -> torch.optim.AdamW:
    """AdamW, the head at learning_rate, the body at body_learning_rate; decay on matrices only (GPT-1 section 4.1)."""
    body_lr = cfg.body_learning_rate or cfg.learning_rate / 3
    groups = []
    for module, lr in ((model.head, cfg.learning_rate), (model.gpt, body_lr)):
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay, "peak_lr": lr})
        groups.append({"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "peak_lr": lr})
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Index lists of batch_size, forever: a fresh shuffle each pass over the n texts (an epoch)."""
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def train_step(model, stepper: OptimizerStep, split, chunk: list[int], cfg, ctx, device):
    """One optimizer step on the texts `chunk`: (classification loss L2, language-model loss L1) as numbers."""
    idx, mask = cd.pad_batch([split.train_x[i] for i in chunk], device)  # (B, T), (B, T)
    targets = torch.tensor([split.train_y[i] for i in chunk], device=device)  # (B,)
    with ctx:
        logits, lm_loss = model.logits_and_lm_loss(idx, mask)  # (B, K), a number
        loss = F.cross_entropy(logits.float(), targets)
        total = loss + cfg.lm_loss_weight * lm_loss  # GPT-1 section 3.2: L3 = L2 + lambda * L1
    stepper.backward(total)

    def stop(what: str):  # a nan/inf loss
        raise UserError(f"{what}; try a lower --learning_rate (now {cfg.learning_rate:g}) or --dtype=float32")

    stepper.step(total.item(), stop)  # the nan guard, clipping, AdamW (training.py)
    return loss.item(), lm_loss.item()


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


def better(row: dict, best: dict) -> bool:
    """Higher validation accuracy wins; at equal accuracy, a validation loss lower by MIN_LOSS_GAIN (without it, a
    loss creeping from 0.00012 to 0.00011 at 100% accuracy would never let early stopping stop)."""
    if row["val_accuracy"] != best["val_accuracy"]:
        return row["val_accuracy"] > best["val_accuracy"]
    return row["val_loss"] < best["val_loss"] - MIN_LOSS_GAIN


def fine_tune(model, split, probe: dict, cfg, ctx, device, say, logger=None):
    """Fine-tune everything for up to max_steps, evaluating every eval_interval steps; leave in `model` the weights of
    the best evaluation, the probe (step 0) included. Returns (best evaluation, history of evaluations)."""
    optimizer = make_optimizer(model, cfg)
    stepper = OptimizerStep(model, optimizer, cfg.grad_clip, torch.float32, device)  # float32/bfloat16: no scaling
    generator = torch.Generator().manual_seed(cfg.seed)
    stream = batches(len(split.train_x), cfg.batch_size, generator)
    best, best_state, history, waited = probe, copy_state(model), [], 0
    sums, started = [0.0, 0.0, 0], time.perf_counter()
    progress = make_progress_bar(0, cfg.max_steps, say is print)
    for step in range(1, cfg.max_steps + 1):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(step - 1, cfg.max_steps)
        loss, lm_loss = train_step(model, stepper, split, next(stream), cfg, ctx, device)
        sums = [sums[0] + loss, sums[1] + lm_loss, sums[2] + 1]
        if progress:
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", lm_loss=f"{lm_loss:.3f}")
        if step % cfg.eval_interval and step != cfg.max_steps:
            continue
        val_loss, preds = evaluate(model, split.val_x, split.val_y, cfg.batch_size, ctx, device)
        row = {"step": step, "train_loss": sums[0] / sums[2], "lm_loss": sums[1] / sums[2], "val_loss": val_loss,
               "val_accuracy": (preds == torch.tensor(split.val_y)).float().mean().item(), "val_preds": preds}
        history.append(row)
        sums, improved = [0.0, 0.0, 0], better(row, best)
        if improved:
            best, best_state, waited = row, copy_state(model), 0
        else:
            waited += 1
        (progress.write if progress else say)(
            f"step {step}/{cfg.max_steps}: train loss {row['train_loss']:.4f} (LM {row['lm_loss']:.3f}), val loss "
            f"{val_loss:.4f}, val accuracy {row['val_accuracy']:.1%}, {time.perf_counter() - started:.0f}s"
            + (" (best so far)" if improved else ""))
        if logger:
            logger.log({"train/loss": row["train_loss"], "train/lm_loss": row["lm_loss"], "val/loss": val_loss,
                        "val/accuracy": row["val_accuracy"]}, step)
        if cfg.patience and waited >= cfg.patience:
            say(f"stopping early: {waited} evaluations without improvement (--patience={cfg.patience})")
            break
    if progress:
        progress.close()
    model.load_state_dict(best_state)
    return best, history


def copy_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
