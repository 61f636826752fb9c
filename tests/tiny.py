"""What the end-to-end tests share: the flags of a tiny playground.py run (seconds on one thread)."""

TINY = ["--block_size=16", "--embedding_dim=32", "--num_of_layers=2", "--num_of_heads=2", "--batch_size=8",
        "--eval_iters=2", "--sample_tokens=0", "--dtype=float32", "--device=cpu", "--learning_rate=3e-3"]
