"""What the end-to-end tests share: the flags of a tiny playground.py run (seconds on one thread), GPT-2's recipe
(configs/gpt2.yaml: characters, a fixed step count) at a tiny size, whatever `python playground.py` defaults to; and
the modern recipe's model options (configs/modern.yaml's), for tests that build a GPT directly."""
from pathlib import Path

GPT2_RECIPE = str(Path(__file__).resolve().parent.parent / "configs" / "gpt2.yaml")
TINY = ["--config", GPT2_RECIPE, "--block_size=16", "--embedding_dim=32", "--num_of_layers=2", "--num_of_heads=2",
        "--batch_size=8", "--eval_iters=2", "--sample_tokens=0", "--dtype=float32", "--device=cpu",
        "--learning_rate=3e-3"]

MODERN = dict(position="rope", norm="rms", qk_norm=True, activation="relu2", tie_embeddings=False, zero_init=True,
              bias=False)
