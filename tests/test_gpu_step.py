"""The training step as a GPU wants it, checked on the CPU: batches prefetched in order, a nan loss noted on the device
and read later, fused/foreach AdamW, activation checkpointing that changes no gradient, torch.compile with the
hand-written attention (one graph, the same loss and gradients)."""
import numpy as np
import pytest
import torch

import data
import playground
import preflight
from config import ModelConfig, TrainConfig, UserError
from gpt import GPT
from tiny import MODERN, TINY
from training import OptimizerStep

CPU = torch.device("cpu")


def tiny(**settings):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=30, block_size=16, embedding_dim=32, num_of_layers=2, num_of_heads=2, **settings))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 30, (4, 16), generator=g), torch.randint(0, 30, (4, 16), generator=g)  # (B, T), (B, T)


def gradients(model, x, y, forward=None):
    """The loss and every parameter's gradient of `model`, run through `forward` (the model itself, or compiled)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks for every model
    _, loss = (model if forward is None else forward)(x, y)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_training_batches_are_get_batch_in_step_then_micro_step_order():
    ids = np.arange(500, dtype=np.uint16)
    batches = data.training_batches(ids, 4, 8, seed=3, start_step=7, micro_steps=range(2, 4), device=CPU)
    for step, micro in [(7, 2), (7, 3), (8, 2), (8, 3)]:  # a process's micro-steps 2 and 3 of each step, from step 7
        x, y = next(batches)
        want_x, want_y = data.get_batch(ids, 4, 8, 3, step, micro)
        assert torch.equal(x, want_x) and torch.equal(y, want_y)


class Stopped(Exception):
    pass


def stop(what):
    raise Stopped(what)


def test_a_nan_loss_tensor_is_noted_without_stopping_and_the_first_one_is_named_at_the_check():
    model = tiny()
    stepper = OptimizerStep(model, model.configure_optimizer(1e-3, 0.1), 1.0, torch.float32, CPU)
    for step in range(6):
        x, y = batch(step)
        _, loss = model(x, y)
        if step in (3, 5):
            loss = loss * float("inf") if step == 3 else loss * float("nan")
        stepper.backward(loss)
        stepper.step(loss.detach(), stop, step)  # no wait, no stop: the loss is only noted on the device
    with pytest.raises(Stopped, match=r"^loss became inf at step 3$"):
        stepper.check_diverged(stop)


def test_finite_losses_pass_the_check():
    model = tiny()
    stepper = OptimizerStep(model, model.configure_optimizer(1e-3, 0.1), 1.0, torch.float32, CPU)
    _, loss = model(*batch())
    stepper.backward(loss)
    stepper.step(loss.detach(), stop, 0)
    stepper.check_diverged(stop)


@pytest.mark.usefixtures("private_cache")
def test_the_loop_reads_the_loss_at_log_intervals_and_before_saving(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sees a dog. a dog sees the cat.\n" * 200)
    logged = []
    monkeypatch.setattr(playground, "log_training", lambda progress, logger, step, loss, *rest: logged.append(step))
    playground.main([str(corpus), f"--out_dir={tmp_path / 'out'}", *TINY, "--max_iters=12", "--log_interval=5",
                     "--eval_interval=100", "--checkpoint_interval=6"])
    assert logged == [5, 6, 10, 12]  # log intervals, a checkpoint (6) and the end: nowhere else


def test_adamw_is_fused_on_the_cpu_and_steps_as_foreach_does():
    """The fused kernel (one pass per parameter) against foreach AdamW (batched ops): the same update to float
    rounding, weight decay on matrices only included. The gradients are set by hand: a backward pass gives some
    parameters (the keys' bias, which softmax ignores) gradients of rounding noise, which Adam's normalisation would
    turn into updates that differ between any two implementations."""
    models = [tiny(), tiny()]
    fused = models[0].configure_optimizer(1e-2, 0.1)
    assert fused.defaults["fused"] is True
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
              for g in models[1].configure_optimizer(1e-2, 0.1).param_groups]
    foreach = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.99), foreach=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in models[0].parameters()]
        for model, optimizer in zip(models, (fused, foreach)):
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad.clone()
            optimizer.step()
    for a, b, start in zip(models[0].parameters(), models[1].parameters(), tiny().parameters()):
        assert not torch.equal(a, start)  # they moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(dropout):
    x, y = batch()
    plain, checkpointed = tiny(dropout=dropout), tiny(dropout=dropout)
    checkpointed.activation_checkpointing = True
    loss, grads = gradients(plain, x, y)
    loss_ckpt, grads_ckpt = gradients(checkpointed, x, y)
    assert torch.equal(loss, loss_ckpt)
    for name, grad in grads.items():  # the recomputed forward is the same arithmetic, dropout masks included
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=1e-7, msg=name)


def test_activation_checkpointing_lowers_what_the_memory_preflight_asks_for(monkeypatch):
    asked = []
    monkeypatch.setattr(preflight, "check_fits", lambda need, what, fix, device=None: asked.append(need))
    model_cfg = ModelConfig(vocab_size=100, num_of_layers=12)
    preflight.check_memory(model_cfg, TrainConfig(), 100)
    preflight.check_memory(model_cfg, TrainConfig(activation_checkpointing=True), 100)
    plain, checkpointed = asked[0], asked[2]  # each call asks for training, then for the sample
    assert checkpointed < plain


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, MODERN], ids=["gpt2", "modern"])
def test_compiled_hand_written_attention_is_one_graph_with_the_eager_loss_and_gradients(options):
    """~40-60 s each on a busy CPU core: the compiler's first call is the cost. The modern options bring the rotary
    turn's and ReLU squared's autograd Functions, which must be traced whole too."""
    x, y = batch()
    model = tiny(attention_backend="manual", **options)
    explained = torch._dynamo.explain(model)(x, y)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    loss, grads = gradients(model, x, y)
    compiled_loss, compiled_grads = gradients(model, x, y, forward=torch.compile(model))
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_memory_preflight_of_a_gpu_run_asks_the_gpu_not_the_host(monkeypatch):
    """A GPU run's weights and activations live on the GPU: its free memory decides, whatever the host has."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 80 * 2**30))  # 2 GiB free
    monkeypatch.setattr(preflight.Path, "read_text", lambda self: "MemAvailable: 1 kB\n")  # a host with nothing left
    gpu = torch.device("cuda", 0)
    small = ModelConfig(vocab_size=100)
    preflight.check_fits(1e9, "one GB", "", gpu)  # fits in the GPU's 2 GiB, though the host has 1 kB
    with pytest.raises(UserError, match=r"needs at least 3\.7 GiB of memory, but the GPU cuda:0 has 2\.0 GiB"):
        preflight.check_fits(4e9, "four GB", "", gpu)
    with pytest.raises(UserError, match="this machine has 0.0 GiB"):
        preflight.check_fits(1e9, "one GB", "", torch.device("cpu"))
    asked = []
    monkeypatch.setattr(preflight, "check_fits", lambda need, what, fix, device=None: asked.append(device))
    preflight.check_memory(small, TrainConfig(), 100, gpu)
    assert asked == [gpu, None]  # training on the GPU, the end-of-run sample on the host
