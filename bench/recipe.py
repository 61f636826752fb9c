"""Tokens/s of each modern-recipe option against GPT-2's recipe, training steps timed in the same run.

    python bench/recipe.py                       # the default model: GPT-2, each option alone, configs/modern.yaml
    python bench/recipe.py --rounds 9 --steps 5

What the README's modern-recipe table needs beside the losses: what each option costs per step. Every contender is
the default model built with one option changed (or all of them, as configs/modern.yaml sets them), trained with
playground.py's own optimizer choice on the built-in corpus's batches. Timing alternates the contenders round by
round (a busy neighbour slows all of them alike) and keeps each one's best round; the figures are ratios to GPT-2.
"""
import argparse
import math
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import data  # noqa: E402
from config import ModelConfig, TrainConfig  # noqa: E402
from gpt import GPT  # noqa: E402
from playground import build_optimizer  # noqa: E402
from tokenizer import train_tokenizer  # noqa: E402
from train_step import Contender  # noqa: E402 (bench/train_step.py's training step)

OPTIONS = {  # name -> (ModelConfig changes, TrainConfig changes); the modern bundle is configs/modern.yaml
    "GPT-2 (the flags' defaults)": ({}, {}),
    "--position=rope": ({"position": "rope"}, {}),
    "--norm=rms": ({"norm": "rms"}, {}),
    "--qk_norm": ({"qk_norm": True}, {}),
    "--activation=relu2": ({"activation": "relu2"}, {}),
    "--bias=false": ({"bias": False}, {}),
    "--tie_embeddings=false": ({"tie_embeddings": False}, {}),
    "--zero_init": ({"zero_init": True}, {}),
    "--optimizer=muon": ({}, {"optimizer": "muon"}),
    "configs/modern.yaml": ({"position": "rope", "norm": "rms", "qk_norm": True, "activation": "relu2", "bias": False,
                             "tie_embeddings": False, "zero_init": True}, {"optimizer": "muon"}),
}
# A tokenizer changes the step by the size of the embedding and the output layer only: these contenders get its
# vocabulary size and the same (character) batches, whose ids all fit in it.
OPTIONS["--tokenizer=bbpe:1024"] = ({"vocab_size": 1024}, {})
OPTIONS["configs/modern.yaml --tokenizer=bbpe:1024"] = ({**OPTIONS["configs/modern.yaml"][0], "vocab_size": 1024},
                                                         OPTIONS["configs/modern.yaml"][1])


def contender(name: str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Contender:
    """The default model with one option changed, and the optimizer playground.py would give it, in float32."""
    torch.manual_seed(0)
    model = GPT(model_cfg)
    return Contender(name, model, build_optimizer(model, train_cfg), torch.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--only", help="comma-separated contender names to time (GPT-2 is always timed)")
    args = parser.parse_args()

    tokenizer = train_tokenizer("char", data.builtin_corpus_path(), progress=False)
    ids = data.load_tokens(data.builtin_corpus_path(), tokenizer, 0.1, ModelConfig().block_size, quiet=True).train
    base_model, base_train = ModelConfig(vocab_size=tokenizer.vocab_size), TrainConfig()
    names = list(OPTIONS)
    if args.only:
        names = [names[0]] + [n for n in names[1:] if n in {m.strip() for m in args.only.split(",")}]
    runs = [contender(n, ModelConfig(**{**base_model.__dict__, **OPTIONS[n][0]}),
                      TrainConfig(**{**base_train.__dict__, **OPTIONS[n][1]})) for n in names]
    B, T = base_train.batch_size, base_model.block_size
    batches = [data.get_batch(ids, B, T, 0, s) for s in range(args.steps)]
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"({torch.backends.cpu.get_cpu_capability()}); default model, batch {B} x {T}, float32")
    for c in runs:  # warm-up
        for x, y in batches[:2]:
            c.step(x, y)
    best = {c.name: math.inf for c in runs}
    for _ in range(args.rounds):
        for c in runs:
            started = time.perf_counter()
            for x, y in batches:
                c.step(x, y)
            best[c.name] = min(best[c.name], (time.perf_counter() - started) / args.steps)
    reference = best[names[0]]
    for name in names:
        print(f"{name:<44} {B * T / best[name]:>9,.0f} tokens/s   {reference / best[name]:.2f}x GPT-2")


if __name__ == "__main__":
    main()
