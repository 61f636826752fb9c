"""The Hugging Face `tokenizers` configurations our trainers reproduce exactly (for tests and bench/tokenizer.py).

For the same corpus file, vocab size and kind, `train_tokenizer` here and `train_with_hf` give the same vocabulary
(tokens and ids) and the same merge list, element for element:

- bbpe: models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(),
        trainers.BpeTrainer(vocab_size=V, special_tokens=["<|endoftext|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
- bpe:  models.BPE(unk_token="[UNK]"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True) and the same decoders.Metaspace,
        trainers.BpeTrainer(vocab_size=V, special_tokens=["<|endoftext|>", "[UNK]"])
- both trained with Tokenizer.train([path], trainer), which reads the file line by line.

Read next: fast.py.
"""
from __future__ import annotations

from .base import EOT

UNK = "[UNK]"
SPECIAL_TOKENS = {"bbpe": [EOT], "bpe": [EOT, UNK]}


def hf_tokenizer_and_trainer(kind: str, vocab_size: int, show_progress: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if kind == "bbpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS["bbpe"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS["bpe"],
                                      show_progress=show_progress)
    else:
        raise ValueError(f"Hugging Face reference exists for bpe and bbpe, not {kind!r}")
    return tok, trainer


def train_with_hf(kind: str, corpus_path: str, vocab_size: int, show_progress: bool = False):
    """Train the Hugging Face tokenizer we must match; returns a `tokenizers.Tokenizer`."""
    tok, trainer = hf_tokenizer_and_trainer(kind, vocab_size, show_progress)
    tok.train([corpus_path], trainer)
    return tok


def vocab_and_merges(hf_tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """An HF tokenizer's vocabulary {token: id} (in id order) and merge list, to compare with ours."""
    import json
    model = json.loads(hf_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges
