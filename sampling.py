"""Sampling: turning the GPT's next-token logits into text, one token at a time, with a KV cache.

A GPT predicts a distribution over the next token; generating text repeats three steps (as minGPT and nanoGPT do):

    logits = model(context)[:, -1]                  # what comes next? (B, V)
    next_id = choose(logits)                         # greedy argmax, or a sample reshaped by temperature/top-k/top-p
    context = context + [next_id]                    # and again

The choice (`choose`):
    greedy          argmax, the minGPT default; deterministic
    temperature     sample from softmax(logits / temperature): < 1 sharpens, > 1 flattens, -> 0 becomes greedy
    top_k           keep only the k most probable tokens (Fan et al. 2018)
    top_p           keep the smallest set of most probable tokens whose probability reaches p ("nucleus", Holtzman et
                    al. 2020); applied after temperature and top_k, in that order, as Hugging Face does

The loop (`stream`), reference and fast path side by side:
    kv_cache=False  the reference: every step re-runs the model on the whole context
    kv_cache=True   the fast path (the default): the keys and values of earlier tokens never change (the model is
                    causal), so attention.KVCache keeps them; the prompt goes through the model once, then each step
                    runs ONE new position through the same `model.hidden_states`, whose attention takes its
                    cheap one-query path (attention.MultiHeadAttention._decode_step).
                    tests/test_generate.py proves both loops give the same tokens; bench/generate.py measures the
                    gain, and compares it with Hugging Face's generate.

The context policy, when the text outgrows block_size. The model has learned absolute positions 0..block_size-1, so a
window cannot slide by one token while keeping the cache: every cached key was computed at its old position. Sliding
exactly (nanoGPT) means a full recompute of block_size positions per step once the window is full, which erases the
cache's gain. So, in BOTH modes:

    the model sees the tokens from `start` on; when they would exceed block_size, the last half of them
    (block_size // 2 tokens) becomes the new prefix and is re-encoded once, and the cache fills up again.

The model therefore conditions on between block_size/2 and block_size tokens, a re-encode costs one prefill every
block_size/2 tokens, and the reference and the cache see exactly the same tokens at every step. A prompt longer than
block_size is cut to its last block_size tokens.

The probabilities reported (`Step.prob`, `Step.top_probs`) are the model's own: softmax of the raw logits at
temperature 1, before temperature, top-k or top-p reshape them. They say what the model believes, whatever the
sampler then does with it (under greedy, the sampler's own distribution would be 1.0 everywhere).

Shape letters (the README's alphabet): B batch, T tokens so far, V vocab size, N new tokens, A alternatives shown
per step, C embedding_dim.
Read next: generate.py, the command line around this.
"""
from dataclasses import dataclass

import torch

from tokenizer import Tokenizer, TokenizerError

PREALLOCATE = 1 << 16  # new-token columns stream() allocates at most; past them it keeps only the model's window


def check_settings(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None):
    """Raise ValueError for settings that would sample nonsense (generate.py checks them as one-line errors)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if temperature < 0 or temperature != temperature:
        raise ValueError(f"temperature={temperature} must be positive (or 0 for greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")


def filter_logits(logits, top_k: int | None = None, top_p: float | None = None):
    """Set to -inf every logit outside the top_k most probable tokens and outside the top_p nucleus.

    logits: (B, V) -> (B, V). Exactly k tokens survive top_k, ties broken by torch.topk; top_p keeps token i (in
    order of probability) while the probability of the tokens before it is below p, so the most probable one
    always survives.  probs [0.5, 0.3, 0.15, 0.05], top_p=0.8 -> kept [0.5, 0.3] (0.5 < 0.8, 0.8 is not).
    """
    if top_k is not None and top_k < logits.size(-1):
        values, indices = torch.topk(logits, top_k, dim=-1)  # (B, k) each
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)  # (B, V)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
        sorted_probs = torch.softmax(sorted_logits, dim=-1)  # (B, V)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V), probability of the tokens ranked above
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))  # (B, V)
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)  # (B, V), back in vocabulary order
    return logits


def sampling_probs(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """The distribution a token is drawn from: softmax(logits / temperature) after top_k and top_p. (B, V) -> (B, V)."""
    return torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)  # (B, V)


def choose(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           greedy: bool = False, generator: torch.Generator | None = None):
    """The next token of each row: (B, V) logits -> (B, 1) ids. temperature=0 means greedy (its limit)."""
    if greedy or temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    probs = sampling_probs(logits, temperature, top_k, top_p)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


@dataclass
class Step:
    """One generated position: the chosen tokens and, if asked for, the model's probabilities at that step."""
    ids: torch.Tensor                     # (B,) the token chosen in each row
    prob: torch.Tensor | None = None      # (B,) the model's probability of that token
    top_ids: torch.Tensor | None = None   # (B, A) the A most probable tokens, most probable first
    top_probs: torch.Tensor | None = None  # (B, A) their probabilities


@dataclass
class Generation:
    """What `generate` returns when asked for probabilities: the tokens and the per-step probabilities."""
    ids: torch.Tensor                     # (B, T + N) the prompt followed by the new tokens
    probs: torch.Tensor                   # (B, N) the model's probability of each new token
    top_ids: torch.Tensor | None = None   # (B, N, A) the A most probable tokens at each step
    top_probs: torch.Tensor | None = None  # (B, N, A) and their probabilities


def stream(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None,
           kv_cache: bool = True, with_probs: bool = False, top_alternatives: int = 0):
    """Yield one Step per new token: `for step in stream(model, idx, 100): print(step.ids)`.

    idx: (B, T) prompt ids, T >= 1. The model runs in eval mode without autograd for the whole loop (its previous
    mode is restored afterwards). with_probs / top_alternatives=A ask for the model's probabilities (see the module
    docstring); with neither and greedy, no softmax is computed at all.
    """
    check_settings(max_new_tokens, temperature, top_k, top_p)
    B, T = idx.shape
    if T < 1:
        raise ValueError("the prompt must hold at least one token (an end-of-text or newline token, for instance)")
    block_size = model.config.block_size
    keep = max(1, block_size // 2)  # tokens kept as the new prefix when the window is full
    A = min(top_alternatives, model.config.vocab_size)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # entered per step, never across a yield: the caller's code runs normally
            # The loop reads only the window the model sees, so the buffer need not hold all N new tokens: it holds at
            # most T + PREALLOCATE, and when full keeps only the window (`offset`: position of its first column).
            capacity = T + min(max_new_tokens, max(PREALLOCATE, block_size))
            tokens = torch.empty(B, capacity, dtype=torch.long, device=idx.device)  # (B, capacity)
            tokens[:, :T] = idx
            offset = 0
            # Under autocast the projections make bfloat16 keys and values: keep them in that dtype, like the queries.
            device_type = idx.device.type
            dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
            caches = model.new_kv_caches(B, device=idx.device, dtype=dtype) if kv_cache else None  # preallocated
        start = max(0, T - block_size)  # the model sees tokens[:, start:length]
        cached = start  # tokens[:, start:cached] are in the caches; the rest still has to go through the model
        for length in range(T, T + max_new_tokens):
            with torch.inference_mode():
                if length - start > block_size:  # the window is full: its last half becomes the new prefix
                    start = length - keep
                    if kv_cache:
                        for cache in caches:  # every cached key sits at an old position: start again
                            cache.reset()
                        cached = start
                if length - offset == capacity:  # the buffer is full: move the window to its front
                    window = tokens[:, start - offset:length - offset].clone()  # (B, length - start)
                    tokens[:, :window.size(1)] = window
                    offset = start
                if kv_cache:  # only what the caches lack goes through the model: the prompt, then one token a step
                    hidden = model.hidden_states(tokens[:, cached - offset:length - offset],
                                                 kv_caches=caches)  # (B, new, C)
                    logits = model.lm_head(hidden[:, -1])  # (B, V), only the last position needs the head
                    cached = length
                else:
                    logits = model(tokens[:, start - offset:length - offset])[0][:, -1]  # (B, V), the whole window
                logits = logits.float()  # (B, V); under autocast the head gives bfloat16
                next_id = choose(logits, temperature, top_k, top_p, greedy, generator)  # (B, 1)
                tokens[:, length - offset] = next_id[:, 0]
                step = Step(ids=next_id[:, 0])  # (B,)
                if with_probs or A:
                    model_probs = torch.softmax(logits, dim=-1)  # (B, V), temperature 1, unfiltered
                    step.prob = model_probs.gather(-1, next_id)[:, 0]  # (B,)
                    if A:
                        step.top_probs, step.top_ids = torch.topk(model_probs, A, dim=-1)  # (B, A) each
            yield step
    finally:
        model.train(was_training)


def generate(model, idx, max_new_tokens: int, return_probs: bool = False, top_alternatives: int = 0, **settings):
    """Extend idx (B, T) by max_new_tokens tokens -> ids (B, T + N), or a Generation when return_probs is set
    (top_alternatives > 0 implies it).

    settings: temperature, top_k, top_p, greedy, generator, kv_cache, as for `stream`.
    """
    return_probs = return_probs or top_alternatives > 0
    steps = list(stream(model, idx, max_new_tokens, with_probs=return_probs, top_alternatives=top_alternatives,
                        **settings))
    new = torch.stack([s.ids for s in steps], dim=1)  # (B, N)
    ids = torch.cat((idx, new), dim=1)  # (B, T + N)
    if not return_probs:
        return ids
    probs = torch.stack([s.prob for s in steps], dim=1)  # (B, N)
    if not top_alternatives:
        return Generation(ids, probs)
    top_ids = torch.stack([s.top_ids for s in steps], dim=1)  # (B, N, A)
    top_probs = torch.stack([s.top_probs for s in steps], dim=1)  # (B, N, A)
    return Generation(ids, probs, top_ids, top_probs)


def sample_start(tokenizer: Tokenizer, first_id: int) -> int:
    """The token a sample starts from: end-of-text, else a newline, else (a corpus without one) `first_id`."""
    if tokenizer.eot_id is not None:
        return tokenizer.eot_id
    try:
        newline = tokenizer.encode("\n")
    except TokenizerError:  # a char tokenizer of a corpus with no newline
        newline = []
    return newline[0] if newline else first_id


def sample_text(model, tokenizer: Tokenizer, num_tokens: int, device, ctx, first_id: int = 0) -> str:
    """What playground.py prints after training: num_tokens from the model at temperature 0.8, started from an
    end-of-text or newline token (or `first_id`, the corpus's first token, when the vocabulary has neither)."""
    start = sample_start(tokenizer, first_id)
    model.eval()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one token at a time is too little work to share: a second thread only waits
    try:
        with ctx:
            ids = model.generate(torch.tensor([[start]], device=device), num_tokens, temperature=0.8)
    finally:
        torch.set_num_threads(threads)
    return tokenizer.decode(ids[0, 1:].tolist()).strip()
