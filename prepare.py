"""Encode a corpus into the token cache ahead of training: `python prepare.py CORPUS --tokenizer=bbpe:50257`.

playground.py builds the same cache when it is missing, but under torchrun the other processes would wait for it,
and a corpus of many gigabytes takes a while. Build it once here, on every core of the machine (token_cache.py);
training then only memory-maps it. CORPUS is a text file, a directory of *.txt files or a .jsonl file (corpus.py);
`--tokenizer` is what playground.py will be given (char, bpe:N, bbpe:N trained here and cached, or a tokenizer.json).
Like playground.py, it reads configs/default.yaml when no --config is given, so `python prepare.py CORPUS` prepares
for `python playground.py CORPUS` (a byte-level BPE of 1,024 tokens); `--config FILE.yaml` takes the corpus and the
tokenizer of a training config and leaves the rest of it to playground.py.

    python prepare.py openwebtext.jsonl --tokenizer=bbpe:50257
    torchrun --standalone --nproc_per_node=8 playground.py openwebtext.jsonl --tokenizer=bbpe:50257 ...

Killing it at any moment leaves no cache a later run would trust (the next run, or this one again, rebuilds it).
Read next: device.py (where the model runs), then playground.py.
"""
import sys
from dataclasses import dataclass

import data
import token_cache
from config import DEFAULT_RECIPE, ModelConfig, TrainConfig, UserError, arg, load_config, run_main
from tokenizer import TokenizerError


@dataclass(frozen=True)
class PrepareConfig:
    """What to encode, with what (the same meaning as playground.py's flags of these names). The config file's
    values replace the defaults shown: configs/default.yaml's tokenizer, unless --config names another file."""
    corpus: str | None = arg(None, "text file, directory of *.txt files, or .jsonl file; the built-in corpus if none")
    text_field: str = arg(TrainConfig.text_field, "the field holding each document's text in a .jsonl corpus")
    tokenizer: str = arg(TrainConfig.tokenizer, "'char', a tokenizer.json path, or 'bpe:N' / 'bbpe:N' to train one")
    workers: int | None = arg(None, "processes that encode; every core when not given")

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise UserError(f"workers={self.workers} must be at least 1")


def main(argv=None):
    (cfg,), _ = load_config(sys.argv[1:] if argv is None else argv, (PrepareConfig,), __doc__.splitlines()[0],
                            positional="corpus", default_config=DEFAULT_RECIPE, yaml_classes=(ModelConfig, TrainConfig))
    corpus = data.open_corpus(cfg.corpus, cfg.text_field)
    tokenizer = data.resolve_tokenizer(cfg.tokenizer, corpus)
    cache = token_cache.TokenCache(corpus, tokenizer, data.cache_dir())
    meta = cache.read_meta()
    if meta is None:
        meta = cache.build(workers=cfg.workers)
    else:
        print(f"already cached: {cache.meta_path}")
    documents = f", {meta['documents']:,} documents" if corpus.multi_document else ""
    print(f"{meta['num_tokens']:,} tokens ({meta['num_chars'] / max(meta['num_tokens'], 1):.2f} characters per "
          f"token{documents}) in {cache.ids_path}")


if __name__ == "__main__":
    run_main(main, user_errors=(TokenizerError,))
