"""muon.py: Newton-Schulz orthogonalises, a Muon step is what the paper writes, the split between Muon and AdamW, loss
scaling and exact resume with --optimizer=muon (two processes against one: tests/test_distributed.py)."""
import random

import pytest
import torch

import checkpoint
import playground
from config import ModelConfig, UserError
from gpt import GPT
from muon import Muon, MuonWithAdamW, hidden_matrices, orthogonalize, orthogonalize_reference
from tiny import TINY
from training import OptimizerStep

CPU = torch.device("cpu")


@pytest.mark.parametrize("shape", [(128, 512), (512, 128), (384, 128), (64, 64)])
def test_orthogonalize_with_addmm_equals_the_formula(shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(1))  # (R, K)
    torch.testing.assert_close(orthogonalize(G), orthogonalize_reference(G), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (384, 128), (128, 512)])
def test_orthogonalize_sets_every_singular_value_near_one_and_keeps_the_singular_vectors(shape):
    """Five quintic steps put a random matrix's singular values in [0.68, 1.14] (measured over many seeds); the
    test allows [0.65, 1.2]. Exactly orthogonal would be 1 everywhere: the coefficients trade that for speed."""
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 1e-3  # the size of G does not matter
    O = orthogonalize(G)  # (R, K)
    assert O.shape == G.shape and O.dtype == G.dtype
    singular_values = torch.linalg.svdvals(O)
    assert singular_values.min() > 0.65 and singular_values.max() < 1.2, singular_values
    P, _, Qt = torch.linalg.svd(G, full_matrices=False)
    inside = P.T @ O @ Qt.T  # diagonal when O = P S' Q^T: the same singular vectors as G
    off_diagonal = inside - torch.diag(torch.diagonal(inside))
    assert off_diagonal.abs().max() < 1e-4


def test_a_muon_step_is_the_orthogonalised_nesterov_momentum_scaled_by_the_shape():
    """First step: M = 0.05 G and the Nesterov update 0.05 G + 0.95 M, a multiple of G; orthogonalize ignores the
    scale, so W moves by lr * sqrt(rows/cols) * orthogonalize(G) for a tall matrix, lr * orthogonalize(G) for a wide."""
    for shape, scale in (((128, 32), 2.0), ((32, 128), 1.0)):
        W = torch.nn.Parameter(torch.randn(shape))
        before = W.detach().clone()
        W.grad = torch.randn(shape)
        Muon([W], lr=0.02).step()
        torch.testing.assert_close(W.detach(), before - 0.02 * scale * orthogonalize(W.grad), rtol=0, atol=1e-5)


def test_muon_without_momentum_steps_each_gradient_alone():
    W = torch.nn.Parameter(torch.zeros(16, 16))
    optimizer = Muon([W], lr=0.1, momentum=0.0)
    expected = torch.zeros(16, 16)
    for seed in range(3):
        W.grad = torch.randn(16, 16, generator=torch.Generator().manual_seed(seed))
        expected -= 0.1 * orthogonalize(W.grad)
        optimizer.step()
    torch.testing.assert_close(W.detach(), expected)


def test_muon_refuses_a_vector():
    with pytest.raises(ValueError, match="matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(8))])


def tiny_gpt(**options):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=30, block_size=16, embedding_dim=32, num_of_layers=2, num_of_heads=2,
                           **options))


@pytest.mark.parametrize("options", [{}, dict(position="rope", norm="rms", qk_norm=True, tie_embeddings=False)],
                         ids=["gpt2", "modern"])
def test_muon_takes_the_blocks_matrices_and_adamw_everything_else(options):
    model = tiny_gpt(**options)
    optimizer = MuonWithAdamW(model, muon_lr=0.02, adamw_lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    names = {id(p): name for name, p in model.named_parameters()}
    muon = sorted(names[id(p)] for group in optimizer.muon.param_groups for p in group["params"])
    assert muon == sorted(f"blocks.{i}.{m}.weight" for i in range(2)
                          for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    adamw = [names[id(p)] for group in optimizer.adamw.param_groups for p in group["params"]]
    assert "tok_emb.weight" in adamw and "blocks.0.ln_1.weight" in adamw and "blocks.0.attn.qkv.bias" in adamw
    assert sorted(muon + adamw) == sorted(names.values())  # every parameter once (a tied head is tok_emb)
    assert ("lm_head.weight" in adamw) == (options.get("tie_embeddings") is False)  # an untied head: AdamW's
    assert [g["lr_scale"] for g in optimizer.param_groups if "lr_scale" in g] == [pytest.approx(20.0)]
    assert hidden_matrices(model) == [p for g in optimizer.muon.param_groups for p in g["params"]]


def train(model, dtype, steps=3):
    optimizer = MuonWithAdamW(model, 0.02, 1e-3, 0.1, (0.9, 0.99))
    stepper = OptimizerStep(model, optimizer, 1.0, dtype, CPU)
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randint(0, 30, (4, 16), generator=g), torch.randint(0, 30, (4, 16), generator=g)  # (B, T)
        _, loss = model(x, y)
        stepper.backward(loss)
        stepper.step(loss.item(), lambda what: pytest.fail(what))
    return optimizer


def test_float16_loss_scaling_unscales_muons_gradients_too():
    """GradScaler unscales every group the wrapper lists and steps it as one optimizer: the weights are those of a
    run without loss scaling (the scale is a power of two, so scaling is exact)."""
    plain, scaled = tiny_gpt(), tiny_gpt()
    train(plain, torch.float32)
    state = train(scaled, torch.float16).state_dict()
    assert set(state) == {"muon", "adamw"} and len(state["muon"]["state"]) == 8  # one momentum per matrix
    for (name, a), b in zip(plain.named_parameters(), scaled.parameters()):
        assert torch.equal(a, b), name


@pytest.fixture
def corpus(tmp_path, private_cache):
    rng = random.Random(0)
    words = ["the cat", "a dog", "sees", "loves", "the fish.", "a bone."]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(4)) for _ in range(800)) + "\n")
    return str(path)


def test_resume_with_muon_and_wsd_is_exact(corpus, tmp_path, capsys):
    flags = [*TINY, "--optimizer=muon", "--schedule=wsd", "--warmup_iters=4", "--lr_decay_iters=30", "--dropout=0.1",
             "--eval_interval=10"]
    playground.main([corpus, f"--out_dir={tmp_path / 'straight'}", "--max_iters=30", *flags])
    playground.main([corpus, f"--out_dir={tmp_path / 'split'}", "--max_iters=15", *flags])
    with pytest.raises(UserError, match=r"--optimizer differs from the checkpoint's \('muon'\)"):
        playground.main([corpus, f"--out_dir={tmp_path / 'split'}", "--max_iters=30", "--resume", "--optimizer=adamw"])
    playground.main([corpus, f"--out_dir={tmp_path / 'split'}", "--max_iters=30", "--resume"])
    assert "muon lr 0.02" in capsys.readouterr().out
    a = checkpoint.load_checkpoint(tmp_path / "straight" / "model_checkpoint.tar")
    b = checkpoint.load_checkpoint(tmp_path / "split" / "model_checkpoint.tar")
    assert a["step"] == b["step"] == 30 and a["best_val_loss"] < 2.0  # from ln(vocab) ~ 2.8
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    momentum = a["optimizer"]["muon"]["state"]
    assert all(torch.equal(m["momentum_buffer"], b["optimizer"]["muon"]["state"][i]["momentum_buffer"])
               for i, m in momentum.items())
