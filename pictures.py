"""Pictures of a run and of a model: training curves, attention maps, token probabilities, embeddings.

The scripts that have the data draw with these functions:
    playground.py   out_dir/curves.png at every evaluation (training_curves), from the eval history it keeps in the
                    checkpoint, so a resumed run draws its whole history
    generate.py     --attention_map attn.png (attention_maps), --show_probs --plot probs.png (probability_text),
                    --top_alternatives N --plot probs.png (alternatives_chart)
    plot.py         several runs overlaid (training_curves, run_labels), the token embeddings (embeddings)

Every function builds a matplotlib `Figure` directly, never through pyplot, and saves it with the Agg renderer: a file,
never a window, no display needed. matplotlib is imported inside the functions, so `import pictures` (and a training
run that draws no curve) costs nothing. Each function returns the Figure it saved, which the tests read back.

Shapes in the README's letters (H heads, T prompt tokens, V vocab size, C embedding_dim); layers are spelled out.
Read next: plot.py, the command line that overlays runs and draws embeddings.
"""
import math
from pathlib import Path

import torch

from config import UserError
from preflight import check_writable_dir

DPI = 90  # small files (the README's pictures are 30-120 KB) that still read well on a screen


def token_label(token: str) -> str:
    """A token as a picture label: spaces as ␣, newlines as ↵, tabs as ⇥, other control characters escaped.

    ' the\\n' -> '␣the↵'. (generate.visible does the same for a table cell, where a newline reads better as \\n.)
    """
    shown = {" ": "␣", "\n": "↵", "\t": "⇥"}
    return "".join(shown.get(c) or (c if c.isprintable() else repr(c)[1:-1]) for c in token) or "∅"


def check_output(path, setting: str = "picture") -> Path:
    """Refuse, before any work, a PNG path that cannot be written: a folder, or a folder that cannot take files."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"the {setting} {path} is a folder; give a file name such as {path / 'picture.png'}")
    check_writable_dir(path.parent, f"the {setting}'s folder", "write it somewhere else")
    return path


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # a Figure without pyplot: no window, no backend to choose

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path):
    path = check_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    except (OSError, ValueError) as e:  # ValueError: a suffix matplotlib has no format for (.pngx)
        raise UserError(f"cannot write {path}: {e}") from None
    return fig


# ---------------------------------------------------------------------------------------------------------------------
# Training curves


def training_curves(runs: dict[str, list[dict]], path, lr_schedule: list[float] | None = None):
    """Loss against step (tokens seen on the top axis), val bits/char on the right axis, the lr in a panel below.

    runs: {label: history}, a history being playground.py's eval records
        [{"step": 500, "tokens": 2048000, "train": 1.95, "val": 2.01, "bpc": 2.90, "lr": 0.0036}, ...].
    Train loss is dashed, val loss solid, one colour per run. Bits per character are loss / ln 2 / chars per token, a
    fixed rescaling of one run's val loss, so they get a second axis; runs whose tokenizers differ are compared in
    bits per character only (their losses are over different tokens). lr_schedule: the lr at every step (one run);
    without it the panel joins the lr at each evaluation.
    """
    fig = _new_figure(8, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    histories = [h for h in runs.values() if h]
    factors = {round(r["bpc"] / r["val"], 6) for h in histories for r in h}  # 1 / (ln 2 * chars per token)
    same_tokens = len(factors) <= 1
    for color, (label, history) in zip(_colors(len(runs)), runs.items()):
        steps = [r["step"] for r in history]
        name = f"{label}: " if len(runs) > 1 else ""
        if same_tokens:
            top.plot(steps, [r["train"] for r in history], "--", marker=".", color=color, label=f"{name}train")
            top.plot(steps, [r["val"] for r in history], "-", marker="o", color=color, label=f"{name}val")
        else:
            top.plot(steps, [r["bpc"] for r in history], "-", marker="o", color=color, label=f"{name}val")
        if lr_schedule is None:
            bottom.plot(steps, [r["lr"] for r in history], "-", marker=".", color=color)
    if lr_schedule is not None:
        bottom.plot(range(len(lr_schedule)), lr_schedule, color="gray")
    top.set(ylabel="loss (nats per token)" if same_tokens else "val bits per character",
            title="training curves" if len(runs) == 1 else "training curves: " + ", ".join(runs))
    if same_tokens and factors:
        factor = factors.pop()
        right = top.secondary_yaxis("right", functions=(lambda x: x * factor, lambda x: x / factor))
        right.set_ylabel("bits per character")
    per_step = {round(h[-1]["tokens"] / h[-1]["step"]) for h in histories if h[-1]["step"]}
    if len(per_step) == 1:  # the same tokens per step in every run: steps and tokens are one axis
        n = per_step.pop()
        tokens_axis = top.secondary_xaxis("top", functions=(lambda s: s * n / 1e6, lambda t: t * 1e6 / n))
        tokens_axis.set_xlabel("tokens seen (millions)")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.set(xlabel="step", ylabel="learning rate")
    bottom.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def _colors(n: int):
    from matplotlib import colormaps

    return [colormaps["tab10"](i % 10) for i in range(n)]


IGNORED = {"out_dir", "resume", "device", "dtype", "compile", "wandb", "wandb_project", "sample_tokens", "eval_iters",
           "eval_interval", "checkpoint_interval"}  # settings that do not change what a run learns


def run_labels(configs: dict[str, dict]) -> dict[str, str]:
    """A legend label per run: the settings that differ between the runs, or the folder name when none does.

    {"a": {"lr": 1, "seed": 1}, "b": {"lr": 2, "seed": 1}} -> {"a": "lr=1", "b": "lr=2"}
    """
    names = sorted({k for c in configs.values() for k in c} - IGNORED)
    differ = [k for k in names if len({repr(c.get(k)) for c in configs.values()}) > 1]
    if not differ:
        return {run: Path(run).name or run for run in configs}
    return {run: ", ".join(f"{k}={c.get(k)}" for k in differ) for run, c in configs.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Attention maps


def attention_maps(weights: torch.Tensor, tokens: list[str], path, layers=None, heads=None):
    """A grid of heatmaps, layers down and heads across, of one prompt's attention weights.

    weights: (num_of_layers, H, T, T) from GPT.attention_maps for one prompt; row i of a map is where query token i
    looks (each row sums to 1, and the upper triangle is empty: a GPT sees only the past). tokens: the T token strings.
    layers, heads: which ones to draw (all by default); one layer and one head give one large map.
    """
    layers = range(weights.size(0)) if layers is None else layers
    heads = range(weights.size(1)) if heads is None else heads
    rows, cols = len(layers), len(heads)
    T = len(tokens)
    single = rows == cols == 1
    cell = max(3.0, 0.22 * T) if single else max(2.0, min(3.2, 0.11 * T))  # inches per map
    fig = _new_figure(cell * cols + 1.2, cell * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    labels = [token_label(t) for t in tokens]
    short = max(len(label) for label in labels) <= 2  # characters stand upright under the map
    size = 9 if single else max(4, min(7, 180 / max(T, 1) / max(rows, cols) ** 0.5))
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(weights[layer, head].float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(range(T), labels, fontsize=size, rotation=0 if short else 90)
            ax.set_yticks(range(T), labels, fontsize=size)
            ax.tick_params(length=0)
            if r == rows - 1:
                ax.set_xlabel("key (attended to)", fontsize=8)
            if c == 0:
                ax.set_ylabel("query", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------------------
# Token probabilities


def probability_text(prompt: list[str], tokens: list[str], probs: list[float], path, width: int = 64):
    """The text, token by token, each on a patch coloured by the probability the model gave it.

    prompt: the prompt's tokens (drawn in grey, no probability); tokens, probs: the generated ones. Lines wrap at
    `width` characters and after a newline token (drawn as ↵).
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    pieces = [(token_label(t), None) for t in prompt] + [(token_label(t), p) for t, p in zip(tokens, probs)]
    placed, col, row = [], 0, 0  # (label, prob, column, row) in character cells
    for (label, p), raw in zip(pieces, prompt + tokens):
        if col + len(label) > width and col > 0:
            col, row = 0, row + 1
        placed.append((label, p, col, row))
        col += len(label)
        if "\n" in raw:
            col, row = 0, row + 1
    rows = row + 1
    fig = _new_figure(width * 0.125 + 1.6, rows * 0.26 + 1.0)
    ax = fig.subplots()
    cmap, norm = colormaps["RdYlGn"], Normalize(0, 1)
    for label, p, c, r in placed:
        ax.add_patch(Rectangle((c, r), len(label), 1, facecolor="0.88" if p is None else cmap(norm(p)),
                               edgecolor="white", linewidth=0.5))
        ax.text(c + len(label) / 2, r + 0.5, label, ha="center", va="center", family="monospace", fontsize=9)
    ax.set(xlim=(0, width), ylim=(rows, 0), title="each generated token on the probability the model gave it "
                                                  "(grey: the prompt)")
    ax.title.set_fontsize(9)
    ax.axis("off")
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="probability", shrink=0.8)
    return _save(fig, path)


def alternatives_chart(tokens: list[str], top_tokens: list[list[str]], top_probs: list[list[float]], path,
                       columns: int = 5):
    """One small bar chart per generated token: the K most probable tokens at that step, the chosen one in orange.

    tokens: the generated tokens; top_tokens, top_probs: (steps, K) the K most probable tokens and their
    probabilities at each step, most probable first (sampling.Step.top_ids / top_probs).
    """
    steps, K = len(tokens), len(top_tokens[0])
    cols = min(columns, steps)
    rows = math.ceil(steps / cols)
    fig = _new_figure(2.3 * cols, 0.35 + (0.18 * K + 0.45) * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for i, ax in enumerate(axes.flat):
        if i >= steps:
            ax.axis("off")
            continue
        labels = [token_label(t) for t in top_tokens[i]]
        colors = ["tab:orange" if t == tokens[i] else "tab:blue" for t in top_tokens[i]]
        ax.barh(range(K), top_probs[i], color=colors)
        ax.set_yticks(range(K), labels, fontsize=7, family="monospace")
        ax.invert_yaxis()  # the most probable on top
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(f"{i + 1}: {token_label(tokens[i])}", fontsize=8)
    fig.suptitle(f"the {K} most probable next tokens at each step (orange: the one sampled)", fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings


def embedding_kind(token: str) -> str:
    """'a' -> 'vowel', 'T' -> 'capital', '7' -> 'digit', '?' -> 'punctuation', '\\n' -> 'space'; longer: 'word'."""
    if len(token) != 1:
        return "space" if token and not token.strip() else "word"
    if token.isspace():
        return "space"
    if token.isdigit():
        return "digit"
    if token.isupper():
        return "capital"
    if token.isalpha():
        return "vowel" if token in "aeiouy" else "consonant"
    return "punctuation"


def embeddings(weight: torch.Tensor, tokens: list[str], path, max_labels: int = 300):
    """The (V, C) token embedding matrix projected onto its first two principal components, tokens labelled.

    PCA with torch.pca_lowrank (centered; its randomized range finder runs under a fixed seed, without touching the
    caller's RNG). Colours by kind of character (vowels, consonants, capitals, digits, punctuation, space): in a
    trained char model the kinds cluster. Only the first max_labels tokens get a label.
    """
    weight = weight.detach().float().cpu()  # (V, C)
    centered = weight - weight.mean(dim=0)  # (V, C)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, S, Vt = torch.pca_lowrank(centered, q=min(6, *weight.shape), center=False, niter=6)  # Vt: (C, q)
    xy = centered @ Vt[:, :2]  # (V, 2)
    share = (S[:2] ** 2 / centered.pow(2).sum()).tolist()  # fraction of the variance along each axis
    fig = _new_figure(8, 7)
    ax = fig.subplots()
    kinds = [embedding_kind(t) for t in tokens]
    for kind, color in zip(("vowel", "consonant", "capital", "digit", "punctuation", "space", "word"), _colors(7)):
        picked = [i for i, k in enumerate(kinds) if k == kind]
        if not picked:
            continue
        ax.scatter(xy[picked, 0], xy[picked, 1], s=12, color=color, label=kind, alpha=0.8)
        for i in picked:
            if i < max_labels:
                ax.annotate(token_label(tokens[i]), (xy[i, 0], xy[i, 1]), fontsize=11 if len(tokens) <= 128 else 7,
                            color=color,
                            xytext=(3, 2), textcoords="offset points")
    ax.set(xlabel=f"first principal component ({share[0]:.0%} of the variance)",
           ylabel=f"second principal component ({share[1]:.0%})",
           title=f"token embeddings ({weight.size(0)} tokens x {weight.size(1)} dimensions), projected to 2-D")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
