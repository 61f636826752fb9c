"""training.py: float16 loss scaling changes nothing but the scale, the nan guard, the scaler's state for resuming."""
import copy

import pytest
import torch

from config import ModelConfig
from gpt import GPT
from training import OptimizerStep, lr_factor

CPU = torch.device("cpu")


class Stopped(Exception):
    pass


def stop(what):
    raise Stopped(what)


def train(model, dtype, steps=3, poison_at=None):
    optimizer = model.configure_optimizer(1e-3, 0.1, (0.9, 0.99))
    stepper = OptimizerStep(model, optimizer, 1.0, dtype, CPU)
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randint(0, 30, (4, 16), generator=g), torch.randint(0, 30, (4, 16), generator=g)  # (B, T)
        _, loss = model(x, y)  # float32 here: only the scaler differs
        if step == poison_at:
            loss = loss * float("nan")
        stepper.backward(loss)
        stepper.step(loss.item(), stop)
    return stepper


def tiny():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=30, block_size=16, embedding_dim=32, num_of_layers=2, num_of_heads=2))


def test_loss_scaling_gives_the_same_weights_as_none():
    """The scale is a power of two: scaling and unscaling the gradients is exact, so the steps are identical."""
    plain, scaled = tiny(), tiny()
    assert train(plain, torch.float32).scaler_state() is None  # off: nothing to save
    state = train(scaled, torch.float16).scaler_state()
    assert state["scale"] > 1 and state["_growth_tracker"] == 3
    for (name, a), b in zip(plain.named_parameters(), scaled.parameters()):
        assert torch.equal(a, b), name


def test_the_scaler_state_resumes():
    model = tiny()
    state = train(model, torch.float16).scaler_state()
    fresh = OptimizerStep(copy.deepcopy(model), torch.optim.AdamW(model.parameters()), 1.0, torch.float16, CPU)
    fresh.load_scaler_state(state)
    assert fresh.scaler_state() == state


def test_a_nan_loss_stops_before_the_step():
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Stopped, match="loss became nan"):
        train(model, torch.float32, steps=1, poison_at=0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fine_tuning_schedule_corners():
    assert [lr_factor(s, 100) for s in (0, 9, 10, 100)] == [0.1, 1.0, 1.0, 0.0]
