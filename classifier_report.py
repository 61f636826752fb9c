"""How a classifier is judged: accuracy against a baseline, per-class precision and recall, a confusion matrix.

Accuracy alone misleads when classes are unbalanced (always answering "histories" scores well on a set that is mostly
histories), so classify.py prints the majority-class baseline beside it, and at the end a per-class table:

    precision(k) = correct k / texts predicted k      recall(k) = correct k / texts that are k

and the confusion matrix, one row per true class and one column per predicted class: the diagonal is what went right,
the rest says which classes are mistaken for which. Curves go to a PNG (when matplotlib is installed) and to
Weights & Biases (--wandb).

Shape letters: K num_classes.
Read next: tests/test_classify.py.
"""
import torch

from config import ModelConfig


def confusion_matrix(targets, preds, num_classes: int) -> torch.Tensor:
    """(K, K) counts, rows the true class, columns the predicted one. [0, 0, 1], [0, 1, 1], 2 -> [[1, 1], [0, 1]]."""
    targets, preds = torch.as_tensor(targets), torch.as_tensor(preds)  # (N,), (N,)
    pair_ids = targets * num_classes + preds  # (N,), one id per (true, predicted) pair
    return torch.bincount(pair_ids, minlength=num_classes ** 2).view(num_classes, num_classes)  # (K, K)


def majority_baseline(train_labels: list[int], val_labels: list[int], num_classes: int) -> tuple[int, float]:
    """The most frequent training class, and the validation accuracy of always answering it.
    [0, 1, 1], [0, 1], 2 -> (1, 0.5)."""
    majority = int(torch.bincount(torch.tensor(train_labels), minlength=num_classes).argmax())
    return majority, sum(y == majority for y in val_labels) / len(val_labels)


def format_report(confusion: torch.Tensor, classes: list[str]) -> str:
    """Per-class precision, recall and support, then the confusion matrix (rows: true class, columns: predicted)."""
    confusion = confusion.double()
    correct = confusion.diagonal()  # (K,)
    precision = correct / confusion.sum(dim=0).clamp(min=1)  # (K,) of the texts predicted k, how many are k
    recall = correct / confusion.sum(dim=1).clamp(min=1)  # (K,) of the texts that are k, how many were found
    width = max(9, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  precision  recall  support"]
    for k, name in enumerate(classes):
        lines.append(f"{name:<{width}}  {precision[k]:>9.3f}  {recall[k]:>6.3f}  {int(confusion[k].sum()):>7}")
    lines.append(f"\nconfusion matrix (rows: true class, columns: predicted)\n{'':<{width}}  "
                 + "  ".join(f"{c:>{width}}" for c in classes))
    for k, name in enumerate(classes):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{int(n):>{width}}" for n in confusion[k]))
    return "\n".join(lines)


def plot_curves(history: list[dict], path: str, baseline: float) -> str | None:
    """Loss and accuracy per epoch as a PNG, when matplotlib is installed; returns the path written, or None."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # draw to a file, no window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    left.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    right.plot(epochs, [r["val_accuracy"] for r in history], "o-", label="validation")
    right.axhline(baseline, linestyle="--", color="gray", label="majority class")
    right.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_wandb(cfg, model_cfg: ModelConfig):
    """A WandbLogger (playground.py) for a classify.TrainClassifierConfig; log(metrics, epoch), finish()."""
    from playground import WandbLogger  # one wandb setup for every script: offline unless WANDB_MODE says otherwise

    return WandbLogger(cfg, model_cfg)  # reads cfg.out_dir, cfg.wandb_project and both configs' fields
