"""Generate text from a trained checkpoint, and see the model's probabilities while it does.

    python generate.py --prompt "ROMEO:"                      # samples from out/best_checkpoint.tar
    python generate.py --checkpoint out/model_checkpoint.tar --prompt FILE:prompt.txt --num_samples 3
    python generate.py --prompt "ROMEO:" --greedy --show_probs --max_new_tokens 20
    python generate.py --prompt "ROMEO:" --top_alternatives 6 --max_new_tokens 10
    python generate.py --prompt "ROMEO: Wherefore" --attention_map attn.png       # what each head looks at
    python generate.py --prompt "ROMEO:" --show_probs --plot probs.png             # the text coloured by probability

Sampling (sampling.py) runs with a KV cache: after the prompt, each new token costs the model one position.
`--no_kv_cache` re-runs the whole context every step instead (the reference; same tokens, slower).

`--show_probs` writes each generated token followed by its probability under the model, `He holds a (0.4355)
dog (0.5347)`; `--top_alternatives N` adds a table with, for each generated token, the N tokens the model found most
probable at that step. These are the model's own probabilities (softmax of its logits at temperature 1), before the
sampler's temperature, top-k or top-p reshape them (see sampling.py).

Samples go to stdout (with a `--- sample i/n ---` line before each when there are several); what was loaded and how
fast it ran go to stderr, so `python generate.py ... > out.txt` keeps only the text. The pictures (--attention_map,
--plot) are drawn by pictures.py.
Read next: sampling.py (the loop, the sampler, the KV cache policy) if you came here first, then pictures.py.
"""
import os
import sys
import time
from dataclasses import dataclass

import torch

import pictures
from checkpoint import load_model
from config import UserError, arg, check_numbers, load_config, run_main
from device import resolve_device
from preflight import check_fits
from sampling import stream
from tokenizer import Tokenizer, TokenizerError


BYTES_PER_TOKEN = 64  # what run_sample keeps per new token, at least: a Python int in a list, its probability, text


@dataclass(frozen=True)
class GenerateConfig:
    """What generate.py samples from, how, and what it shows."""
    checkpoint: str | None = arg(None, "checkpoint to sample from; out_dir/best_checkpoint.tar when not given")
    out_dir: str = arg("out", "where to look for best_checkpoint.tar (then model_checkpoint.tar) by default")
    prompt: str = arg("", "text to continue, or FILE:path.txt to read it from a file; empty = start from an "
                          "end-of-text (or newline) token")
    num_samples: int = arg(1, "how many samples to draw, one after another")
    max_new_tokens: int = arg(500, "tokens to generate per sample")
    temperature: float = arg(0.8, "divide the logits by this before sampling: < 1 safer, > 1 wilder")
    top_k: int | None = arg(None, "sample only among the k most probable tokens")
    top_p: float | None = arg(None, "sample only among the most probable tokens whose probabilities add up to p")
    greedy: bool = arg(False, "always take the most probable token (argmax, minGPT's default); ignores the above")
    seed: int | None = arg(1337, "random seed: the same seed gives the same text; 'none' for a fresh one each run")
    stream: bool = arg(False, "print tokens as they are generated")
    show_probs: bool = arg(False, "write each generated token followed by its probability, e.g. 'dog (0.5347)'")
    top_alternatives: int = arg(0, "after each sample, a table of the N most probable tokens at every step")
    no_kv_cache: bool = arg(False, "re-run the whole context every step (the slow reference) instead of a KV cache")
    device: str = arg("auto", "'auto' (cuda, then mps, then cpu), or a torch device such as 'cpu' or 'cuda:0'")
    attention_map: str | None = arg(None, "draw the prompt's attention weights, a layer x head grid of heatmaps, to "
                                          "this PNG and stop (no sampling)")
    layer: int | None = arg(None, "with --attention_map: only this layer (0 = the first)")
    head: int | None = arg(None, "with --attention_map: only this head (0 = the first); with --layer, one large map")
    plot: str | None = arg(None, "draw the sample to this PNG: coloured by probability (with --show_probs), or a bar "
                                 "chart of the likeliest tokens at each step (with --top_alternatives)")
    threads: int = arg(1, "CPU threads; 0 = torch's default (one per core). One, because a batch-1 step is a chain "
                          "of small operations that a second thread slows down (10-100x on a busy 2-core machine)")

    def __post_init__(self):
        check_numbers(self)
        if self.threads < 0:
            raise UserError(f"threads={self.threads} must not be negative (0 = torch's default)")
        for name in ("num_samples", "max_new_tokens", "top_k"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name}={value} must be at least 1")
        if not self.greedy and not self.temperature > 0:
            raise UserError(f"temperature={self.temperature} must be positive when sampling; "
                            f"use --greedy for the most probable token")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p={self.top_p} must be in (0, 1], e.g. 0.9")
        if self.top_alternatives < 0:
            raise UserError(f"top_alternatives={self.top_alternatives} must not be negative")
        for name in ("layer", "head"):
            value = getattr(self, name)
            if value is not None and (self.attention_map is None or value < 0):
                raise UserError(f"--{name}={value} " + ("must not be negative" if self.attention_map else
                                                        "only chooses what --attention_map draws; add it"))
        if self.plot and not (self.show_probs or self.top_alternatives):
            raise UserError("--plot draws the probabilities: add --show_probs or --top_alternatives N")
        if self.plot and self.num_samples > 1:
            raise UserError(f"--plot draws one sample; drop --num_samples={self.num_samples}")


def note(message: str):
    print(message, file=sys.stderr)


def find_checkpoint(cfg: GenerateConfig) -> str:
    """The named checkpoint, else out_dir's best one, else out_dir's latest one."""
    if cfg.checkpoint:
        return cfg.checkpoint
    best, latest = os.path.join(cfg.out_dir, "best_checkpoint.tar"), os.path.join(cfg.out_dir, "model_checkpoint.tar")
    if os.path.isfile(best):
        return best
    if os.path.isfile(latest):
        note(f"no {best} (no evaluation has run yet); using {latest}")
        return latest
    raise UserError(f"no checkpoint in {cfg.out_dir}/; train one with `python playground.py --out_dir={cfg.out_dir}` "
                    f"or name one with --checkpoint")


def read_prompt(spec: str) -> str:
    """The prompt text: the flag itself, or the content of the file named after FILE:."""
    if not spec.startswith("FILE:"):
        return spec
    path = spec[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"prompt file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"prompt file {path} is not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"cannot read prompt file {path}: {e.strerror}") from None


def encode_prompt(text: str, tokenizer: Tokenizer) -> tuple[list[int], bool]:
    """(prompt ids, whether they are a stand-in start token for an empty prompt, not to be printed)."""
    try:
        ids = tokenizer.encode(text)
    except TokenizerError as e:
        raise UserError(f"the prompt cannot be encoded: {e}") from None
    if ids:
        return ids, False
    if tokenizer.eot_id is not None:
        note("empty prompt: starting from the end-of-text token")
        return [tokenizer.eot_id], True
    try:
        ids = tokenizer.encode("\n")
    except TokenizerError:
        raise UserError("the prompt is empty and this tokenizer has neither an end-of-text token nor a newline to "
                        "start from; give one with --prompt") from None
    note("empty prompt: starting from a newline (this tokenizer has no end-of-text token)")
    return ids, True


class TextStream:
    """Decode tokens as they arrive. A byte-level token can end in the middle of a UTF-8 character (decoded as
    U+FFFD); such a token is held back, up to 3 of them, until the character is complete."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


def with_prob(piece: str, prob: float) -> str:
    """' dog', 0.5347 -> ' dog (0.5347)'. A newline is drawn as ↵ before the probability, then kept; a token of
    spaces only is drawn as ␣ (else `a (0.1)  (0.2)` hides which token the second probability belongs to)."""
    if piece and not piece.strip(" "):
        piece = "␣" * len(piece)
    if "\n" in piece:
        return piece.replace("\n", "↵") + f" ({prob:.4f})" + "\n"
    return f"{piece} ({prob:.4f})"


def visible(token: str, width: int = 12) -> str:
    """A token as a table cell: spaces as ␣, control characters escaped, cut to `width`. ' the\\n' -> '␣the\\n'."""
    shown = "".join("␣" if c == " " else repr(c)[1:-1] if not c.isprintable() else c for c in token)
    return shown if len(shown) <= width else shown[:width - 1] + "…"


def alternatives_table(tokenizer: Tokenizer, ids: list[int], probs: list[float], top_ids, top_probs) -> str:
    """One row per generated token: the token and its probability, then the N most probable tokens at that step.

       step  token        p  | 1              2              3
          1  h       0.4123  | h     0.4123   e     0.2210   o     0.0831
    """
    rows = [[visible(tokenizer.token_str(t)) for t in row] for row in top_ids]
    chosen = [visible(tokenizer.token_str(t)) for t in ids]
    w = max(len(s) for s in chosen + [c for row in rows for c in row] + ["token"])
    K = len(top_ids[0])
    lines = [f"{'step':>5}  {'token':<{w}} {'p':>6}  | " + "  ".join(f"{k + 1:<{w + 7}}" for k in range(K)).rstrip()]
    for i, (tok, p, row, row_p) in enumerate(zip(chosen, probs, rows, top_probs)):
        cells = "  ".join(f"{t:<{w}} {q:.4f}" for t, q in zip(row, row_p))
        lines.append(f"{i + 1:>5}  {tok:<{w}} {p:.4f}  | {cells}")
    return "\n".join(lines)


def write(text: str):
    sys.stdout.write(text)
    sys.stdout.flush()


def run_sample(model, tokenizer, prompt_ids, cfg: GenerateConfig, generator, device, live: bool):
    """Generate one sample; print it (token by token when `live`). Returns (new ids, their probabilities, the top K
    ids and probabilities at each step); the lists are empty when not asked for."""
    K = cfg.top_alternatives
    steps = stream(model, torch.tensor([prompt_ids], device=device), cfg.max_new_tokens, temperature=cfg.temperature,
                   top_k=cfg.top_k, top_p=cfg.top_p, greedy=cfg.greedy, generator=generator,
                   kv_cache=not cfg.no_kv_cache, with_probs=cfg.show_probs, top_alternatives=K)
    text, new_ids, probs, top_ids, top_probs = TextStream(tokenizer), [], [], [], []
    for step in steps:
        token = step.ids[0].item()
        new_ids.append(token)
        if step.prob is not None:
            probs.append(step.prob[0].item())
        if K:
            top_ids.append(step.top_ids[0].tolist())
            top_probs.append(step.top_probs[0].tolist())
        if live:
            write(with_prob(tokenizer.token_str(token), probs[-1]) if cfg.show_probs else text.push(token))
    if live:
        write(text.flush() + "\n")
    elif cfg.show_probs:
        write("".join(with_prob(tokenizer.token_str(t), p) for t, p in zip(new_ids, probs)) + "\n")
    else:
        write(tokenizer.decode(new_ids) + "\n")
    if K:
        write("\n" + alternatives_table(tokenizer, new_ids, probs, top_ids, top_probs) + "\n")
    return new_ids, probs, top_ids, top_probs


def draw_attention(model, tokenizer, prompt_ids: list[int], cfg: GenerateConfig):
    """--attention_map: the prompt's attention weights in every layer and head (or the chosen ones) as heatmaps."""
    c = model.config
    for name, value, count in (("layer", cfg.layer, c.num_of_layers), ("head", cfg.head, c.num_of_heads)):
        if value is not None and value >= count:
            raise UserError(f"--{name}={value} is out of range: this model has {count} {name}s, 0 to {count - 1}")
    if len(prompt_ids) > c.block_size:
        raise UserError(f"the prompt is {len(prompt_ids)} tokens, longer than the model's context of {c.block_size}; "
                        f"shorten it (a map of {c.block_size} x {c.block_size} would be unreadable anyway)")
    idx = torch.tensor([prompt_ids], device=model.tok_emb.weight.device)  # (1, T)
    weights = model.attention_maps(idx)[:, 0]  # (num_of_layers, H, T, T)
    layers = None if cfg.layer is None else [cfg.layer]
    heads = None if cfg.head is None else [cfg.head]
    tokens = [tokenizer.token_str(t) for t in prompt_ids]
    pictures.attention_maps(weights, tokens, cfg.attention_map, layers, heads)
    note(f"wrote {cfg.attention_map}: attention of {len(prompt_ids)} prompt tokens")


def draw_probabilities(tokenizer, prompt_ids, sample, cfg: GenerateConfig, max_steps: int = 40):
    """--plot: the sample coloured by probability, or (with --top_alternatives) a bar chart per step."""
    new_ids, probs, top_ids, top_probs = sample
    text = [tokenizer.token_str(t) for t in new_ids]
    if cfg.top_alternatives:
        if len(new_ids) > max_steps:
            note(f"the chart shows the first {max_steps} of {len(new_ids)} steps")
        top_text = [[tokenizer.token_str(t) for t in row] for row in top_ids[:max_steps]]
        pictures.alternatives_chart(text[:max_steps], top_text, top_probs[:max_steps], cfg.plot)
    else:
        pictures.probability_text([tokenizer.token_str(t) for t in prompt_ids], text, probs, cfg.plot)
    note(f"wrote {cfg.plot}")


def main(argv=None):
    (cfg,), _ = load_config(sys.argv[1:] if argv is None else argv, (GenerateConfig,), __doc__.splitlines()[0])
    for picture in (cfg.attention_map, cfg.plot):
        if picture:
            pictures.check_output(picture)  # before any work
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    path = find_checkpoint(cfg)
    model, tokenizer, found = load_model(path, device)  # a checkpoint file, or a GPT-2 directory (gpt2.py)
    # A sample is kept whole until printed: each token as an id, its text and, if asked for, its probabilities.
    K = min(cfg.top_alternatives, model.config.vocab_size)
    check_fits(cfg.max_new_tokens * (BYTES_PER_TOKEN + 16 * K), f"--max_new_tokens={cfg.max_new_tokens}",
               "ask for fewer tokens, or several samples with --num_samples")
    prompt = read_prompt(cfg.prompt)
    if cfg.attention_map and not prompt:
        raise UserError("--attention_map draws the prompt's attention: give one with --prompt")
    prompt_ids, stand_in = encode_prompt(prompt, tokenizer)
    if cfg.attention_map:
        return draw_attention(model, tokenizer, prompt_ids, cfg)
    block_size = model.config.block_size
    where = f"{device}, {torch.get_num_threads()} thread(s)" if device.type == "cpu" else str(device)
    step = "?" if found is None or found.step is None else found.step
    note(f"{path}: {model.num_parameters():,} parameters, step {step}, {tokenizer.kind} tokenizer; "
         f"{'no KV cache' if cfg.no_kv_cache else 'KV cache'}, {where}")
    if len(prompt_ids) > block_size:
        note(f"the prompt is {len(prompt_ids)} tokens; the model sees its last {block_size} (block_size)")

    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    live = cfg.stream
    started, total = time.perf_counter(), 0
    try:
        for i in range(cfg.num_samples):
            if cfg.num_samples > 1:
                write(f"{'' if i == 0 else chr(10)}--- sample {i + 1}/{cfg.num_samples} ---\n")
            if not stand_in:
                write(prompt)
            sample = run_sample(model, tokenizer, prompt_ids, cfg, generator, device, live)
            total += len(sample[0])
    except BrokenPipeError:  # `python generate.py | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    elapsed = time.perf_counter() - started
    note(f"{total} tokens in {elapsed:.2f}s ({total / elapsed:,.0f} tokens/s)")
    if cfg.plot:
        draw_probabilities(tokenizer, [] if stand_in else prompt_ids, sample, cfg)


if __name__ == "__main__":
    run_main(main, user_errors=(TokenizerError,))
