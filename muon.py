"""Muon: momentum, orthogonalised by a Newton-Schulz iteration, for the weight matrices inside the blocks.

Keller Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"
(https://kellerjordan.github.io/posts/muon/). One Muon step on a weight matrix W with gradient G:

    M = 0.95 M + 0.05 G                     momentum, an average of recent gradients
    U = 0.05 G + 0.95 M                     Nesterov: look one momentum step ahead
    O = orthogonalize(U)                    keep U's directions, set every singular value to about 1
    W = W - lr * max(1, rows/cols)**0.5 * O

Why orthogonalise? A gradient matrix of a transformer is nearly low-rank: a few directions dominate it, and a plain
(or Adam) step moves mostly along them. With U = P S Q^T (its SVD), O = P Q^T moves the weights by the same amount
in every direction U points in, so the rare directions learn as fast as the common ones. An orthogonalised R x K
update has min(R, K) singular values of 1; the factor sqrt(R/K) gives a tall matrix's entries the same RMS,
1/sqrt(K), that a wide matrix's have without it.

Only the blocks' matrices (attention qkv and proj, MLP fc and proj) take Muon. The token and position embeddings
are looked up row by row, not multiplied as a whole matrix, so orthogonalising their update has no such meaning;
the output layer (the embedding itself when tied, the default) trained better with AdamW in the paper's runs, and
gains and biases are vectors, with no singular values to even out: all these stay with AdamW, as the paper
recommends. MuonWithAdamW below holds the two optimizers as one.

Several processes (distributed.py): DDP has already averaged the gradients when step() runs, so every process
computes the same update from the same numbers and the copies stay equal. The plain one-process algorithm is
correct as it is; the reference's sharding (each rank orthogonalises some matrices, then all-gather) only saves
time on many GPUs.

Shape letters: R rows, K columns of one weight matrix (nn.Linear's weight is (out_features, in_features)).
Read next: playground.py, which builds this optimizer for --optimizer=muon.
"""
import torch

# The quintic's coefficients, from the reference implementation (see orthogonalize for where they come from).
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """(R, K) -> (R, K): G with every singular value moved into roughly [0.7, 1.15], its singular vectors unchanged.

    Newton-Schulz: with X = G / |G| (Frobenius norm, so every singular value s lies in (0, 1]), repeat

        X <- a X + b (X X^T) X + c (X X^T)^2 X

    If X = P S Q^T then X X^T X = P S^3 Q^T: an odd polynomial in X acts on each singular value alone,
    s <- p(s) = a s + b s^3 + c s^5, and leaves P and Q alone. The textbook cubic (1.5 s - 0.5 s^3) converges to
    exactly 1 but slowly from small s. The coefficients (a, b, c) = (3.4445, -4.7750, 2.0315) were chosen to make the
    slope at zero, a, as large as possible (a small s grows ~3.4x per step) while keeping p(s) in a band around 1 for
    s in (0, 1]; they do not converge to 1 (p(1) = 0.70): after five steps the values sit between about 0.7 and 1.15,
    which the paper found trains as well as the exact P Q^T. A direction far weaker than the rest (s ~ 1e-3 |G|)
    does not reach the band in five steps (it ends near 0.2).

    Computed in bfloat16 on a GPU, as the reference does (fast there, and the band needs no precision); in float32
    elsewhere: on the AMD EPYC this was measured on, emulated bfloat16 took 10-20x as long, e.g. 47 ms against 5 ms
    for a 512 x 128 matrix, and gave the same band.
    """
    a, b, c = NEWTON_SCHULZ
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T  # (K, R): X X^T is then the smaller of the two Gram matrices
    X = X / (X.norm() + 1e-7)  # every singular value now at most 1
    for _ in range(steps):
        A = X @ X.T  # (R, R), or (K, K) when tall
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A A, the scaling done inside the matmul
        X = torch.addmm(X, B, X, beta=a)  # a X + B X: (R, K)
    return (X.T if tall else X).to(G.dtype)  # (R, K)


def orthogonalize_reference(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """orthogonalize written as the formula, in float32: X <- a X + (b A + c A A) X with A = X X^T. addmm above does
    the same arithmetic with the scalings folded into the matrix products (1.5x faster on a CPU for this model's
    matrices: fewer passes over memory); tests/test_muon.py checks that the two agree."""
    a, b, c = NEWTON_SCHULZ
    X = G.float()
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return (X.T if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters: lr is in units of spectral norm per step (0.02 in the reference); weight_decay is
    decoupled, as AdamW's (W <- W (1 - lr * weight_decay)); momentum 0.95 with Nesterov, as the reference."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, steps=steps))
        for group in self.param_groups:
            if any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon updates matrices only; give vectors and embeddings to AdamW")

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                momentum = state["momentum_buffer"]
                momentum.lerp_(p.grad, 1 - beta)  # M = beta M + (1 - beta) G
                update = p.grad.lerp(momentum, beta)  # Nesterov: (1 - beta) G + beta M
                rows, cols = p.shape
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(orthogonalize(update, group["steps"]), alpha=-group["lr"] * max(1, rows / cols) ** 0.5)


def hidden_matrices(model) -> list[torch.nn.Parameter]:
    """The 2-D weights inside the transformer blocks: what Muon trains (attention qkv/proj, MLP fc/proj)."""
    return [p for p in model.blocks.parameters() if p.dim() == 2 and p.requires_grad]


class MuonWithAdamW:
    """Muon for the blocks' matrices, AdamW (the model's own configure_optimizer) for everything else, stepped,
    cleared, saved and loaded as one optimizer, so OptimizerStep, GradScaler and checkpoints need no second case.

    The training loop sets each group's lr to the schedule's lr times group["lr_scale"]: 1 for AdamW's groups,
    muon_lr / adamw_lr for Muon's, so the schedule multiplies both peaks."""

    def __init__(self, model, muon_lr: float, adamw_lr: float, weight_decay: float, betas):
        matrices = hidden_matrices(model)
        chosen = {id(p) for p in matrices}
        rest = [p for p in model.parameters() if id(p) not in chosen]
        self.muon = Muon([{"params": matrices, "lr_scale": muon_lr / adamw_lr}], lr=muon_lr)
        self.adamw = model.configure_optimizer(adamw_lr, weight_decay, betas, params=rest)

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict):
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
