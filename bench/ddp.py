"""Benchmark (not a test): training tokens/s with 1 process vs 2 processes (torchrun, gloo) on this CPU.

    python bench/ddp.py [--max_iters=60]

Both runs train the same small model on the built-in corpus with the same global batch (2 micro-batches per step:
accumulated on one process, split over two), so they do the same arithmetic; the ratio shows what DDP's gradient
all-reduce and the second process cost or gain on CPU cores. Each process is given cores/processes threads.
"""
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tokens_per_second(processes: int, max_iters: int, out_dir: str) -> float:
    threads = max(1, (os.cpu_count() or 2) // processes)
    launcher = [sys.executable, "playground.py"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                    "playground.py"]
    flags = [f"--max_iters={max_iters}", f"--eval_interval={max_iters}", "--eval_iters=1", "--sample_tokens=0",
             "--gradient_accumulation_steps=2", "--batch_size=16", f"--out_dir={out_dir}", "--device=cpu"]
    result = subprocess.run(launcher + flags, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode:
        sys.exit(f"run with {processes} process(es) failed:\n{result.stderr[-1500:]}")
    return float(re.search(r"\(([\d,]+) tokens/s\)", result.stdout).group(1).replace(",", ""))


def main():
    max_iters = int(next((a.split("=")[1] for a in sys.argv[1:] if a.startswith("--max_iters=")), 60))
    with tempfile.TemporaryDirectory() as tmp:
        one = tokens_per_second(1, max_iters, os.path.join(tmp, "one"))
        two = tokens_per_second(2, max_iters, os.path.join(tmp, "two"))
    print(f"1 process : {one:10,.0f} tokens/s")
    print(f"2 processes: {two:10,.0f} tokens/s   ({two / one:.2f}x)")


if __name__ == "__main__":
    main()
