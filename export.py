"""Export a checkpoint as a Hugging Face GPT-2 directory: `python export.py CHECKPOINT OUT_DIR`.

    python export.py out/best_checkpoint.tar out/hf
    python -c "from transformers import pipeline; print(pipeline('text-generation', model='out/hf')('ROMEO:'))"

OUT_DIR receives config.json, model.safetensors, tokenizer.json, tokenizer_config.json and generation_config.json
(gpt2.py maps the names and says why four matrices are transposed). `transformers.AutoModelForCausalLM` and
`AutoTokenizer.from_pretrained(OUT_DIR)` load it, and `pipeline("text-generation", model=OUT_DIR)` runs it: same
logits, same greedy tokens (tests/test_gpt2.py). Every tokenizer kind goes: a tokenizer.json is what transformers'
PreTrainedTokenizerFast wraps, char and bpe included. A setting GPT-2 cannot express (bias=False) is refused.
A GPT-2 directory as CHECKPOINT (a fine-tuned one, say) is re-exported as it is.

Read next: classify.py, which fine-tunes a GPT (ours or GPT-2) into a classifier.
"""
import sys

from checkpoint import load_model
from config import UserError, run_main
from gpt2 import save_pretrained
from tokenizer import TokenizerError


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if len(argv) != 2 or any(a.startswith("--") for a in argv):
        raise UserError("usage: python export.py CHECKPOINT OUT_DIR, e.g. python export.py out/best_checkpoint.tar "
                        "out/hf")
    source, out_dir = argv
    model, tokenizer, _ = load_model(source)
    files = save_pretrained(model, tokenizer, out_dir)
    print(f"{source}: {model.num_parameters():,} parameters, {tokenizer.kind} tokenizer ({tokenizer.vocab_size} "
          f"tokens) -> {', '.join(files)}")


if __name__ == "__main__":
    run_main(main, user_errors=(TokenizerError,))
