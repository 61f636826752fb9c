"""Pictures from the command line: several training runs overlaid, or a model's token embeddings.

    python plot.py out/                                   # out/'s training curves -> runs.png
    python plot.py out/ out_bbpe/ --out runs.png          # several runs overlaid, labelled by what differs
    python plot.py --embeddings out/best_checkpoint.tar emb.png   # the token embeddings projected to 2-D (PCA)

The drawing itself is pictures.py's, which playground.py and generate.py use for their own pictures.
Read next: gpt2.py.
"""
import argparse
import sys
from pathlib import Path

from config import UserError, run_main
import pictures

# ---------------------------------------------------------------------------------------------------------------------
# The command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every script here (config.run_main prints it)
        raise UserError(message)


def main(argv=None):
    from checkpoint import LanguageModelCheckpoint

    parser = _Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("runs", nargs="*", metavar="OUT_DIR", help="training runs (their out_dir) to overlay")
    parser.add_argument("--out", default="runs.png", help="where the overlaid curves go")
    parser.add_argument("--embeddings", nargs=2, metavar=("CHECKPOINT", "PNG"),
                        help="draw this checkpoint's token embeddings to PNG instead")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.embeddings:
        if args.runs:
            raise UserError("give either --embeddings CHECKPOINT PNG or training runs, not both")
        source, target = args.embeddings
        pictures.check_output(target)
        checkpoint = LanguageModelCheckpoint.load(source)
        from tokenizer import Tokenizer

        tokenizer = Tokenizer.from_json(checkpoint.tokenizer, source="the checkpoint's tokenizer")
        tokens = [tokenizer.token_str(i) for i in range(tokenizer.vocab_size)]
        pictures.embeddings(checkpoint.model["tok_emb.weight"], tokens, target)
        print(f"wrote {target}")
        return
    if not args.runs:
        raise UserError("name one or more training runs (out_dir folders), or --embeddings CHECKPOINT PNG")
    pictures.check_output(args.out)
    histories, configs = {}, {}
    for run in args.runs:
        checkpoint = LanguageModelCheckpoint.load(Path(run) / "model_checkpoint.tar" if Path(run).is_dir() else run)
        if not checkpoint.history:
            raise UserError(f"{run} has no evaluation history (a checkpoint written before plot.py existed, or "
                            f"before its first evaluation); resume it to start one")
        histories[run] = checkpoint.history
        configs[run] = {**checkpoint.model_config, **(checkpoint.train_config or {})}
    labels = pictures.run_labels(configs)
    if len(set(labels.values())) < len(labels):  # identical settings: tell them apart by folder
        labels = {run: f"{run} ({label})" for run, label in labels.items()}
    pictures.training_curves({labels[run]: histories[run] for run in args.runs}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
