"""tokenizer/fast.py: tiktoken's engine built from our merges gives exactly our `encode`'s ids, in any vocab layout."""
import random

import pytest
from test_tokenizer_hf import HELD_OUT_EXTRA, code, english, mixed_scripts

from tokenizer import EOT, ByteLevelBPETokenizer, train_tokenizer
from tokenizer.fast import FastEncoder, tiktoken_encoding
from tokenizer.pretokenize import BYTE_TO_CHAR


@pytest.fixture(scope="module")
def bbpe(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes((english(rng) + code(rng) + mixed_scripts(rng)).encode("utf-8"))
    return train_tokenizer("bbpe", str(path), 1200, progress=False)


def samples() -> dict[str, str]:
    rng = random.Random(1)
    return {"prose": english(rng, 300), "code": code(rng, 300), "mixed scripts": mixed_scripts(rng, 600),
            "emoji": "👨‍👩‍👧 family 🎉🎉 👍🏽ok😀! e\u0301cole",
            "unseen and odd": HELD_OUT_EXTRA + "  \n\n  x \t\n",
            "special token as text": "a<|endoftext|>b", "empty": ""}


def test_tiktoken_ids_equal_ours(bbpe):
    encoder = FastEncoder(bbpe.to_json())
    assert encoder.engine == "tiktoken"
    for name, text in samples().items():
        assert encoder(text).tolist() == bbpe.encode(text), name


def test_every_kind_of_character_in_a_random_sample_of_code_points(bbpe):
    """tiktoken's Rust regex and Python's `regex` must agree on what \\p{L}, \\p{N} and \\s are (all 1.1M code
    points were compared once, in 150 s; here 20,000 of them, in contexts that exercise each alternative)."""
    rng = random.Random(2)
    points = [chr(c) for c in rng.sample(range(0x110000), 20_000) if not 0xD800 <= c < 0xE000]
    text = "".join(f"x{c} {c}{c}1'{c}\n {c}  " for c in points)
    assert FastEncoder(bbpe.to_json())(text).tolist() == bbpe.encode(text)


def gpt2_layout(tok: ByteLevelBPETokenizer) -> ByteLevelBPETokenizer:
    """The same tokens laid out as GPT-2's vocabulary: the 256 bytes (in GPT-2's order), one token per merge in merge
    order, and <|endoftext|> last (id 50256 in GPT-2; here vocab_size - 1)."""
    order = list(BYTE_TO_CHAR.values()) + [left + right for left, right in tok.merges] + [EOT]
    assert len(set(order)) == len(order) == tok.vocab_size
    return ByteLevelBPETokenizer({token: i for i, token in enumerate(order)}, tok.merges, [EOT])


def test_gpt2_layout_with_endoftext_last(bbpe):
    gpt2 = gpt2_layout(bbpe)
    assert gpt2.eot_id == gpt2.vocab_size - 1 and bbpe.eot_id == 0
    encoder = FastEncoder(gpt2.to_json())
    assert encoder.engine == "tiktoken"
    assert tiktoken_encoding(gpt2).max_token_value == gpt2.eot_id
    for name, text in samples().items():
        ids = encoder(text).tolist()
        assert ids == gpt2.encode(text), name
        assert [gpt2.id_to_token[i] for i in ids] == [bbpe.id_to_token[i] for i in bbpe.encode(text)], name


def test_ids_out_of_merge_order_fall_back_to_tokenizers(bbpe):
    """tiktoken ranks a merge by its token's id: a vocabulary whose later merge has a smaller id would merge in
    another order there, so tiktoken is not used for it."""
    vocab = dict(bbpe.vocab)
    first, last = (left + right for left, right in (bbpe.merges[0], bbpe.merges[-1]))
    vocab[first], vocab[last] = vocab[last], vocab[first]
    swapped = ByteLevelBPETokenizer(vocab, bbpe.merges, [EOT])
    assert tiktoken_encoding(swapped) is None
    encoder = FastEncoder(swapped.to_json())
    assert encoder.engine == "tokenizers"
    for name, text in samples().items():
        assert encoder(text).tolist() == swapped.encode(text), name
