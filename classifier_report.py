"""How a classifier is judged: accuracy against baselines, per-class precision, recall and F1, a confusion matrix.

Accuracy alone misleads when classes are unbalanced (always answering "histories" scores well on a set that is mostly
histories), so classify.py prints the majority-class baseline beside it, and at the end a per-class table:

    precision(k) = correct k / texts predicted k      recall(k) = correct k / texts that are k
    F1(k) = 2 precision recall / (precision + recall)    macro-F1 = the mean of F1(k) over the K classes

(macro-F1 weighs every class alike: a classifier that never answers a rare class loses a whole 1/K of it), and the
confusion matrix, one row per true class and one column per predicted class: the diagonal is what went right,
the rest says which classes are mistaken for which. Curves go to a PNG (when matplotlib is installed) and to
Weights & Biases (--wandb).

Shape letters: K num_classes.
Read next: classifier_predict.py (using a trained classifier).
"""
import torch



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


def per_class_scores(confusion: torch.Tensor):
    """(precision (K,), recall (K,), F1 (K,)) from a (K, K) confusion matrix; 0 where a class was never predicted.
    [[3, 1], [0, 4]] -> precision [1.0, 0.8], recall [0.75, 1.0], F1 [0.857, 0.889]."""
    confusion = confusion.double()
    correct = confusion.diagonal()  # (K,)
    precision = correct / confusion.sum(dim=0).clamp(min=1)  # (K,) of the texts predicted k, how many are k
    recall = correct / confusion.sum(dim=1).clamp(min=1)  # (K,) of the texts that are k, how many were found
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)  # (K,) their harmonic mean
    return precision, recall, f1


def macro_f1(confusion: torch.Tensor) -> float:
    return per_class_scores(confusion)[2].mean().item()


def format_report(confusion: torch.Tensor, classes: list[str]) -> str:
    """Per-class precision, recall, F1 and support, accuracy and macro-F1, then the confusion matrix (rows: true
    class, columns: predicted)."""
    precision, recall, f1 = per_class_scores(confusion)
    width = max(9, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  precision  recall      F1  support"]
    for k, name in enumerate(classes):
        lines.append(f"{name:<{width}}  {precision[k]:>9.3f}  {recall[k]:>6.3f}  {f1[k]:>6.3f}  "
                     f"{int(confusion[k].sum()):>7}")
    accuracy = confusion.diagonal().sum().item() / max(1, confusion.sum().item())
    lines.append(f"accuracy {accuracy:.3f}, macro-F1 {f1.mean().item():.3f}")
    lines.append(f"\nconfusion matrix (rows: true class, columns: predicted)\n{'':<{width}}  "
                 + "  ".join(f"{c:>{width}}" for c in classes))
    for k, name in enumerate(classes):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{int(n):>{width}}" for n in confusion[k]))
    return "\n".join(lines)


def plot_curves(history: list[dict], path: str, baseline: float) -> str | None:
    """Loss and accuracy per evaluation (rows with step, train_loss, val_loss, val_accuracy) as a PNG, when
    matplotlib is installed; returns the path written, or None."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # draw to a file, no window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [row["step"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, [r["train_loss"] for r in history], "o-", label="train")
    left.plot(steps, [r["val_loss"] for r in history], "o-", label="validation")
    left.set(xlabel="optimizer step", ylabel="cross-entropy loss", title="loss")
    right.plot(steps, [r["val_accuracy"] for r in history], "o-", label="validation")
    right.axhline(baseline, linestyle="--", color="gray", label="majority class")
    right.set(xlabel="optimizer step", ylabel="accuracy", title="validation accuracy")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

