"""What a fine-tuned GPT must beat: a bag of character n-grams, and a linear probe of the language model's features.

A fine-tune costs minutes; before trusting it, a user should see what cheaper models score on the same split.
classify.py prints all of them on one line:

    majority class    always the most frequent training label (classifier_report.majority_baseline)
    bag-of-words      TF-IDF of character 1-4-grams within words + logistic regression (scikit-learn), seconds
    linear probe      the frozen GPT's pooled features, encoded once and cached, + a linear layer, seconds

The probe is also where fine-tuning starts: its head initialises the fine-tune's head (LP-FT, Kumar et al. 2022,
"Fine-Tuning can Distort Pretrained Features"), and it is the step-0 candidate of the keep-the-best-by-validation
rule, so a fine-tune can never end below the probe on the validation set; classify.py says so when it does not beat it.

Shape letters: N texts, B batch, C embedding_dim, K num_classes.
Read next: classifier_data.py (files, splits, padding).
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import classifier_data as cd

PROBE_STEPS = 300  # full-batch AdamW steps: a linear model on N x C cached features converges in well under a second
PROBE_LEARNING_RATE = 1e-2
PROBE_EVAL_INTERVAL = 10


def bag_of_words(train_texts: list[str], train_y: list[int], val_texts: list[str], val_y: list[int]):
    """Validation accuracy and seconds of TF-IDF char n-grams + logistic regression; None without scikit-learn.

    char_wb 1-4-grams (n-grams inside word boundaries) beat word unigrams and bigrams on both built-in demos; with
    a few hundred 128-character passages, words alone are too sparse."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError:
        return None
    started = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=2),
                          LogisticRegression(C=10.0, max_iter=2000))
    try:
        model.fit(train_texts, train_y)
    except ValueError:  # e.g. no n-gram occurs twice in a tiny data set: there is no bag of words to fit
        return None
    preds = torch.as_tensor(model.predict(val_texts))  # (N,)
    accuracy = (preds == torch.tensor(val_y)).float().mean().item()
    return accuracy, time.perf_counter() - started


@torch.no_grad()
def encode_features(model, sequences: list[list[int]], batch_size: int, ctx, device) -> torch.Tensor:
    """The pooled final states (N, C) of every text, computed once with the body in eval mode (no dropout)."""
    model.eval()
    features = torch.empty(len(sequences), model.head.in_features)  # (N, C)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths: less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        idx, mask = cd.pad_batch([sequences[i] for i in chunk], device)  # (B, T), (B, T)
        with ctx:
            features[chunk] = model.features(idx, mask).float().cpu()  # (B, C)
    return features


def fit_probe(head: nn.Linear, train_f, train_y, val_f, val_y, weight_decay: float) -> dict:
    """Train `head` on cached features, full batch; leave in it the weights of the best evaluation (by validation
    accuracy, then loss). Returns that evaluation: step, val_loss, val_accuracy, val_preds, train_loss."""
    train_y, val_y = torch.tensor(train_y), torch.tensor(val_y)  # (N,), (N,)
    train_f, val_f = train_f.to(head.weight.device), val_f.to(head.weight.device)  # (N, C)
    optimizer = torch.optim.AdamW(head.parameters(), lr=PROBE_LEARNING_RATE, weight_decay=weight_decay)
    best, best_state = None, None
    for step in range(1, PROBE_STEPS + 1):
        loss = F.cross_entropy(head(train_f).cpu(), train_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % PROBE_EVAL_INTERVAL:
            continue
        with torch.no_grad():
            logits = head(val_f).cpu()  # (N, K)
            val_loss = F.cross_entropy(logits, val_y).item()
            preds = logits.argmax(dim=-1)  # (N,)
        row = {"step": 0, "train_loss": loss.item(), "val_loss": val_loss,
               "val_accuracy": (preds == val_y).float().mean().item(), "val_preds": preds}
        if best is None or (row["val_accuracy"], -val_loss) > (best["val_accuracy"], -best["val_loss"]):
            best, best_state = row, {k: v.detach().clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return best
