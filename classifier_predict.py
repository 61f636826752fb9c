"""Classifying texts with a trained classifier: probabilities in batches, and the CSV `classify.py predict --file`
writes.

    predict(model, tokenizer, "some text")          -> (K,) probabilities of one text
    predict_many(model, tokenizer, [(line, text)])  -> (N, K), padded batches; notes on stderr for what was cut
    predictions_csv(texts, probs, classes)          -> one row per text: line, label, p_<class>..., text

Texts longer than the model's context are cut to their first block_size tokens (and counted in a note); characters a
character-level tokenizer never saw are removed (and listed); a text left with nothing is an error naming its line.

Shape letters: N texts, K classes, B batch, T time (tokens).
Read next: tests/test_classify.py and tests/test_classify_learning.py.
"""
import csv
import io
import sys

import torch
import torch.nn.functional as F

import classifier_data as cd
from config import UserError
from tokenizer import Tokenizer


@torch.no_grad()
def predict(model, tokenizer: Tokenizer, text: str, device="cpu") -> torch.Tensor:
    """A classify.GPTClassifier's class probabilities (K,) for one text (cut to block_size tokens; unknown
    characters removed)."""
    return predict_many(model, tokenizer, [(1, text)], device=device)[0]


@torch.no_grad()
def predict_many(model, tokenizer, texts: list[tuple[int, str]], batch_size: int = 32, device="cpu", name="text"):
    """Class probabilities (N, K) of (line number, text) pairs; notes on stderr for what was cut or removed, and an
    error naming the line of a text with nothing the tokenizer knows."""
    block_size = model.gpt.config.block_size
    encoded = cd.encode_texts(tokenizer, [text for _, text in texts], block_size)
    for (line, _), ids in zip(texts, encoded.ids):
        if not ids:
            where = f"{name} on line {line}" if len(texts) > 1 or name != "text" else "the text"
            raise UserError(f"{where} is empty (or has no character the tokenizer knows); give some text to classify")
    if encoded.unknown_chars:
        print(f"note: removed characters the tokenizer never saw from {encoded.texts_with_unknown} {name}(s): "
              f"{' '.join(map(repr, encoded.unknown_chars[:10]))}", file=sys.stderr)
    if encoded.truncated:
        print(f"note: {encoded.truncated} of {len(texts)} {name}(s) longer than block_size={block_size} tokens were "
              f"cut to their first {block_size}", file=sys.stderr)
    probs = torch.empty(len(texts), model.head.out_features)  # (N, K)
    for start in range(0, len(texts), batch_size):
        idx, mask = cd.pad_batch(encoded.ids[start:start + batch_size], device)  # (B, T), (B, T)
        probs[start:start + batch_size] = F.softmax(model(idx, mask).float(), dim=-1).cpu()  # (B, K)
    return probs


def predictions_csv(texts: list[tuple[int, str]], probs: torch.Tensor, classes: list[str]) -> str:
    """One row per text: its line, the predicted label, each class's probability, the text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "label", *(f"p_{c}" for c in classes), "text"])
    for (line, text), p in zip(texts, probs.tolist()):
        writer.writerow([line, classes[max(range(len(p)), key=p.__getitem__)], *(f"{x:.4f}" for x in p), text])
    return out.getvalue()
