"""GPT-2 in and out: read OpenAI's GPT-2 from a Hugging Face directory into our GPT, and write our GPT as one.

A Hugging Face GPT-2 directory (what `save_pretrained` writes, what the hub serves as `gpt2`, `gpt2-medium`, ...):

    config.json          GPT2Config: n_embd, n_layer, n_head, n_positions, vocab_size, layer_norm_epsilon,
                         activation_function, ...
    model.safetensors    the weights (or pytorch_model.bin, the older torch pickle: read with weights_only=True)
    tokenizer.json       the byte-level BPE (or vocab.json + merges.txt, the files OpenAI released)

The names, both directions. This table is the only place they are written; i is the block index, P = n_positions:

    Hugging Face GPT2LMHeadModel          shape     ours (gpt.GPT)          shape
    transformer.wte.weight                (V, C)    tok_emb.weight          (V, C)   lm_head is tied to it, as ours
    transformer.wpe.weight                (P, C)    pos_emb.weight          (T, C)   cropped to block_size rows
    transformer.h.i.ln_1.{weight,bias}    (C,)      blocks.i.ln_1.*         (C,)
    transformer.h.i.attn.c_attn.*         (C, 3C)   blocks.i.attn.qkv.*     (3C, C)  transposed (Conv1D)
    transformer.h.i.attn.c_proj.*         (C, C)    blocks.i.attn.proj.*    (C, C)   transposed (Conv1D)
    transformer.h.i.ln_2.*                (C,)      blocks.i.ln_2.*         (C,)
    transformer.h.i.mlp.c_fc.*            (C, 4C)   blocks.i.mlp.fc.*       (4C, C)  transposed (Conv1D)
    transformer.h.i.mlp.c_proj.*          (4C, C)   blocks.i.mlp.proj.*     (C, 4C)  transposed (Conv1D)
    transformer.ln_f.*                    (C,)      ln_f.*                  (C,)

GPT-2's Conv1D is a Linear that stores its weight as (in, out) and computes x @ W + b, where nn.Linear stores
(out, in) and computes x @ W.T + b: the four projection matrices are transposed on the way in and on the way out
(biases are not). q, k and v sit side by side in c_attn in the order of our qkv, and both split heads the same way.
Files saved by older code (the hub's original `gpt2`) lack the `transformer.` prefix and carry two buffers per block,
attn.bias (the causal mask, a (1, 1, P, P) lower triangle) and attn.masked_bias (-1e4, a finite stand-in for -inf):
masks, not weights, so they are skipped. A stored lm_head.weight must equal wte (the tying).

    >>> model, tokenizer = load_pretrained("path/to/gpt2")          # or a hub name: "gpt2"
    >>> save_pretrained(model, tokenizer, "out/hf")                   # transformers.AutoModelForCausalLM reads it

Shape letters: V vocab_size, C embedding_dim, T block_size, P n_positions.
Read next: export.py, the command line that writes a checkpoint as a Hugging Face directory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from atomic import atomic_file, atomic_write_bytes
from config import ModelConfig, UserError
from gpt import GPT
from tokenizer import EOT, ByteLevelBPETokenizer, Tokenizer, TokenizerError
from tokenizer.hf_reference import UNK

BLOCK_NAMES = [("ln_1", "ln_1", False), ("attn.c_attn", "attn.qkv", True), ("attn.c_proj", "attn.proj", True),
               ("ln_2", "ln_2", False), ("mlp.c_fc", "mlp.fc", True), ("mlp.c_proj", "mlp.proj", True)]
# activation_function -> ours. gelu_new and gelu_pytorch_tanh are both the tanh approximation (the second is torch's
# own kernel, bit for bit what we compute, so that is what we write); "gelu" is the exact one.
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
GPT2_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
                 "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}  # GPT2Config's, for absent keys
HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]


def name_pairs(num_layers: int) -> list[tuple[str, str, bool]]:
    """[(Hugging Face name, our name, transposed)] for every weight: the table above as data."""
    pairs = [("transformer.wte.weight", "tok_emb.weight", False), ("transformer.wpe.weight", "pos_emb.weight", False)]
    for i in range(num_layers):
        for hf, ours, transposed in BLOCK_NAMES:
            for kind in ("weight", "bias"):
                pairs.append((f"transformer.h.{i}.{hf}.{kind}", f"blocks.{i}.{ours}.{kind}", transposed and
                              kind == "weight"))
    return pairs + [("transformer.ln_f.weight", "ln_f.weight", False), ("transformer.ln_f.bias", "ln_f.bias", False)]


def to_hf_state_dict(state: dict, num_layers: int) -> dict:
    """Our state_dict -> GPT2LMHeadModel's names and layouts (lm_head left out: it is tied to wte)."""
    return {hf: (state[ours].T if transposed else state[ours]).detach().contiguous().clone()  # Linear (out, in) ->
            for hf, ours, transposed in name_pairs(num_layers)}  # Conv1D (in, out); everything else as it is


def from_hf_state_dict(weights: dict, model: GPT, source: str) -> dict:
    """A GPT-2 state dict (either naming) -> a state dict for `model`, every shape checked, positions cropped.
    Only the names of the table are read: the old files' attn.bias / attn.masked_bias buffers are left behind."""
    weights = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in weights.items()}
    config, expected = model.config, model.state_dict()  # the shapes (and dtype) the weights must take
    state = {}
    for hf, ours, transposed in name_pairs(config.num_of_layers):
        if hf not in weights:
            raise UserError(f"{source} has no weight {hf}: not a GPT-2 checkpoint of this config.json, or truncated")
        tensor = weights[hf].T if transposed else weights[hf]  # Conv1D (in, out) -> Linear (out, in)
        if ours == "pos_emb.weight":
            tensor = tensor[:config.block_size]  # (T, C): a shorter context only needs the first positions
        if tensor.shape != expected[ours].shape:
            raise UserError(f"{source}: {hf} has shape {tuple(weights[hf].shape)}, which does not fit config.json "
                            f"(n_embd={config.embedding_dim}, vocab_size={config.vocab_size}); the two files are "
                            f"from different models")
        state[ours] = tensor.to(expected[ours].dtype).contiguous()
    head = weights.get("lm_head.weight")
    if head is not None and not torch.equal(head.to(state["tok_emb.weight"].dtype), state["tok_emb.weight"]):
        raise UserError(f"{source}: lm_head.weight differs from wte; scratchgpt's output layer is tied to the token "
                        f"embedding, as GPT-2's is")
    state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def model_config(hf: dict, source: str, block_size: int | None = None, **settings) -> ModelConfig:
    """GPT2Config (as a dict) -> ModelConfig; a setting our GPT cannot reproduce is refused by name."""
    if hf.get("model_type") != "gpt2":
        raise UserError(f"{source}: model_type={hf.get('model_type')!r}; scratchgpt reads GPT-2 models "
                        f"(model_type 'gpt2') only")
    hf = {**GPT2_DEFAULTS, **hf}
    refusals = {"n_inner": hf.get("n_inner") not in (None, 4 * hf["n_embd"]),
                "activation_function": hf["activation_function"] not in ACTIVATIONS,
                "scale_attn_weights": hf.get("scale_attn_weights") is False,
                "scale_attn_by_inverse_layer_idx": bool(hf.get("scale_attn_by_inverse_layer_idx")),
                "add_cross_attention": bool(hf.get("add_cross_attention")),
                "tie_word_embeddings": hf.get("tie_word_embeddings") is False}
    for name, refused in refusals.items():
        if refused:
            raise UserError(f"{source}: {name}={hf[name]!r} is a GPT-2 variant scratchgpt's GPT does not build")
    if block_size is not None and block_size > hf["n_positions"]:
        raise UserError(f"block_size={block_size} is longer than the model's {hf['n_positions']} learned positions "
                        f"(n_positions); pick {hf['n_positions']} or less")
    try:
        return ModelConfig(vocab_size=hf["vocab_size"], block_size=block_size or hf["n_positions"],
                           embedding_dim=hf["n_embd"], num_of_layers=hf["n_layer"], num_of_heads=hf["n_head"],
                           activation=ACTIVATIONS[hf["activation_function"]], layer_norm_eps=hf["layer_norm_epsilon"],
                           **settings)
    except (TypeError, UserError) as e:
        raise UserError(f"{source}: {e}") from None


def hf_config(config: ModelConfig, eot: int | None = None) -> dict:
    """ModelConfig -> GPT2Config as a dict (eot: the end-of-text id). Refused: what GPT-2 cannot express."""
    if not config.bias:
        raise UserError("bias=False cannot be exported: GPT-2 has a bias in every Linear and LayerNorm")
    modern = {"position": config.position != "learned", "norm": config.norm != "layernorm",
              "qk_norm": config.qk_norm, "activation": config.activation == "relu2",
              "tie_embeddings": not config.tie_embeddings}
    for name, differs in modern.items():
        if differs:
            raise UserError(f"{name}={getattr(config, name)} cannot be exported: GPT2LMHeadModel has no such option "
                            f"(only the GPT-2 recipe, --config configs/gpt2.yaml, exports)")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_embd": config.embedding_dim, "n_layer": config.num_of_layers,
            "n_head": config.num_of_heads, "n_inner": None,
            "activation_function": "gelu_pytorch_tanh" if config.activation == "gelu_tanh" else "gelu",
            "layer_norm_epsilon": config.layer_norm_eps, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout, "initializer_range": 0.02, "bos_token_id": eot, "eos_token_id": eot,
            "tie_word_embeddings": True, "dtype": "float32"}


# ---------------------------------------------------------------------------------------------------------------------
# Reading a directory


def resolve(path: str) -> Path:
    """A local directory as is; anything else is taken for a hub name and downloaded (or found in the hub's cache)."""
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path):
        raise UserError(f"{path} is a file; a GPT-2 model is a directory with config.json and model.safetensors")
    how = (f"download it where there is a network (`huggingface-cli download {path} --local-dir DIR`) and pass "
           f"the directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{path} is not a local directory, and huggingface_hub (which fetches hub names) is not "
                        f"installed; pip install huggingface_hub, or {how}") from None
    try:
        folder = Path(snapshot_download(repo_id=path, allow_patterns=HUB_FILES))
        if not (folder / "model.safetensors").exists():  # older repositories have only the pickle
            folder = Path(snapshot_download(repo_id=path, allow_patterns=HUB_FILES + ["pytorch_model.bin"]))
    except Exception as e:  # offline, no such repository, invalid name: all one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path} is not a local directory and could not be fetched from the Hugging Face hub "
                        f"({reason}); {how}") from None
    return folder


def read_weights(folder: Path) -> tuple[dict, str]:
    """The tensors of model.safetensors, else of pytorch_model.bin (weights_only: loading runs no code)."""
    safetensors_path, pickle_path = folder / "model.safetensors", folder / "pytorch_model.bin"
    try:
        if safetensors_path.exists():
            from safetensors.torch import load_file
            return load_file(str(safetensors_path)), str(safetensors_path)
        if pickle_path.exists():
            weights = torch.load(pickle_path, map_location="cpu", weights_only=True)
            if not isinstance(weights, dict):
                raise ValueError(f"it holds a {type(weights).__name__}, not a dict of tensors")
            return weights, str(pickle_path)
    except Exception as e:  # truncated, random bytes, a pickle with code in it
        path = safetensors_path if safetensors_path.exists() else pickle_path
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path} is not a readable weights file (corrupt or truncated): {reason}") from None
    raise UserError(f"{folder} has no model.safetensors nor pytorch_model.bin: no weights to load")


def read_tokenizer(folder: Path) -> Tokenizer:
    """tokenizer.json (any kind scratchgpt writes, GPT-2's included), else GPT-2's vocab.json + merges.txt."""
    try:
        if (folder / "tokenizer.json").exists():
            path = folder / "tokenizer.json"
            text = path.read_text(encoding="utf-8")
            pre = (json.loads(text).get("pre_tokenizer") or {})
            if pre.get("type") == "ByteLevel" and pre.get("add_prefix_space"):
                raise UserError(f"{path} adds a space before the text (add_prefix_space=true), which scratchgpt's "
                                f"byte-level BPE does not do")
            return Tokenizer.from_json(text, source=str(path))
        if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
            return ByteLevelBPETokenizer(vocab, merges, [EOT] if EOT in vocab else [])  # GPT-2: EOT is the last id
    except (ValueError, TypeError) as e:
        raise UserError(f"{folder}: its tokenizer files are corrupt: {str(e)[:160]}") from None
    except TokenizerError as e:
        raise UserError(f"{folder}: {e}") from None
    raise UserError(f"{folder} has no tokenizer.json nor vocab.json + merges.txt")


def read_model(folder: Path, block_size: int | None = None, **settings) -> GPT:
    """config.json and the weights of a GPT-2 directory -> our GPT (eval mode). settings: dropout, attention_backend."""
    config_path = folder / "config.json"
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json; a GPT-2 directory holds config.json, model.safetensors (or "
                        f"pytorch_model.bin) and tokenizer.json (or vocab.json + merges.txt)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{config_path} is not readable JSON: {str(e)[:160]}") from None
    if not isinstance(hf, dict):
        raise UserError(f"{config_path} is not a JSON object of settings")
    config = model_config(hf, str(config_path), block_size, **settings)
    weights, source = read_weights(folder)
    model = GPT(config)
    model.load_state_dict(from_hf_state_dict(weights, model, source))
    return model.eval()


def load_pretrained(path: str, block_size: int | None = None, device="cpu", **settings) -> tuple[GPT, Tokenizer]:
    """A Hugging Face GPT-2 directory (or hub name) -> (our GPT in eval mode on `device`, its tokenizer).

    block_size: crop the context (default: all n_positions). settings: dropout, attention_backend."""
    folder = resolve(path)
    model = read_model(folder, block_size, **settings)
    tokenizer = read_tokenizer(folder)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
                        f"{model.config.vocab_size} (vocab_size); the tokenizer files belong to another model")
    return model.to(device), tokenizer


def fine_tuning_start(path: str, flags: ModelConfig, explicit: set) -> tuple[GPT, Tokenizer]:
    """playground.py --init_from: the pretrained GPT (train mode) and tokenizer, with the run's dropout and attention
    backend, and its block_size when one was given (the position table is cropped). The shape stays GPT-2's: a shape
    flag that disagrees is refused."""
    block_size = flags.block_size if "block_size" in explicit else None
    model, tokenizer = load_pretrained(path, block_size, dropout=flags.dropout,
                                       attention_backend=flags.attention_backend)
    for name in ("vocab_size", "embedding_dim", "num_of_layers", "num_of_heads", "bias", "activation",
                 "layer_norm_eps", "position", "norm", "qk_norm", "tie_embeddings"):
        if name in explicit and getattr(flags, name) != getattr(model.config, name):
            raise UserError(f"--{name}={getattr(flags, name)} differs from {path}'s {getattr(model.config, name)}; "
                            f"a fine-tuned model keeps its shape: drop --{name}")
    if "tokenizer" in explicit:
        raise UserError(f"--tokenizer with --init_from: {path} brings its own tokenizer; drop --tokenizer")
    return model.train(), tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Writing a directory


def save_pretrained(model: GPT, tokenizer: Tokenizer, out_dir: str) -> list[str]:
    """Write config.json, model.safetensors, tokenizer.json, tokenizer_config.json and generation_config.json, which
    transformers' AutoModelForCausalLM and AutoTokenizer load. Returns the files written."""
    from safetensors.torch import save_file

    config = hf_config(model.config, tokenizer.eot_id)  # refuses first, before anything is written
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {model.config.vocab_size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a directory to write the model into")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "model.safetensors") as f:  # atomic.py, like every other file written here
        # safetensors writes by file name: into the temporary file atomic_file holds open, then renames
        save_file(to_hf_state_dict(model.state_dict(), model.config.num_of_layers), f.name, metadata={"format": "pt"})
    specials = {}
    if tokenizer.eot_id is not None:
        specials = {"bos_token": EOT, "eos_token": EOT}
    if UNK in tokenizer.special_tokens:
        specials["unk_token"] = UNK
    # PreTrainedTokenizerFast wraps any tokenizer.json; clean_up_tokenization_spaces would change decoded text.
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size,
                        "clean_up_tokenization_spaces": False, **specials}
    generation = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id,
                  "max_length": model.config.block_size}
    files = {"config.json": config, "tokenizer_config.json": tokenizer_config, "generation_config.json": generation}
    for name, content in files.items():
        atomic_write_bytes(out / name, (json.dumps(content, indent=2) + "\n").encode())
    tokenizer.save(str(out / "tokenizer.json"))
    return [str(out / name) for name in ("config.json", "model.safetensors", "tokenizer.json",
                                         "tokenizer_config.json", "generation_config.json")]
