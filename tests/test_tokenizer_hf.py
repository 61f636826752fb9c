"""Our bpe and bbpe equal Hugging Face `tokenizers` exactly: vocab, merges, tokenizer.json, encoded ids, decoding."""
import json
import random

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import EOT, Tokenizer, load_tokenizer, train_tokenizer
from tokenizer.hf_reference import train_with_hf, vocab_and_merges

WORDS = ("the of and to a in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down "
         "side been now find king queen thou thee doth hath wherefore").split()


def english(rng: random.Random, sentences: int = 700) -> str:
    out = []
    for i in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            words[rng.randrange(len(words))] += rng.choice(["'s", "'ll", "n't", "'d", "'ve"])
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2000)))
        sentence = " ".join(words).capitalize() + rng.choice([".", ".", "?", "!", ",", ";", ":", " --"])
        out.append(sentence + rng.choice([" ", " ", "\n", "\n\n", '" ', "  "]))
    return "".join(out)


def code(rng: random.Random, lines: int = 900) -> str:
    names = ["x", "y", "total", "self.value", "items[i]", "f(x, y)", "0x1F", "3.14", "None", "'str'", '"quote"']
    out = []
    for _ in range(lines):
        indent = rng.choice(["", "    ", "        ", "\t", "\t\t", "  \t", " "])
        body = rng.choice(["def {a}({b}):", "if {a} == {b}:", "return {a} + {b}", "{a} = [{b},   {a}]",
                           "for {a} in range({b}):", "# {a}  {b}", "{a}\t= {b}\t# aligned", "}} else {{", ""])
        line = indent + body.format(a=rng.choice(names), b=rng.choice(names))
        out.append(line + rng.choice(["", "", "  ", "\t", " "]) + rng.choice(["\n", "\n", "\n", "\r\n"]))
    return "".join(out)


def mixed_scripts(rng: random.Random, pieces: int = 1500) -> str:
    samples = ["日本語の文章です。", "中文字符测试", "한국어 텍스트", "Привет, мир!", "Съешь же ещё этих булок",
               "Ελληνικά γράμματα", "مرحبا بالعالم", "नमस्ते दुनिया", "e\u0301cole", "naïve café", "😀", "🎉🎉",
               "👍🏽", "👨‍👩‍👧", "∑ x² ≤ ∞", "hello world", "ﬁ ligature", "\u00a0nbsp", "tab\there", "₁₂₃ ½"]
    return "".join(rng.choice(samples) + rng.choice([" ", " ", "", "\n", "  "]) for _ in range(pieces))


def ties(rng: random.Random) -> str:
    # Every ordered pair of distinct letters once per line, each line a permutation: pair counts all tie.
    letters = "abcdefgh"
    words = [a + b for a in letters for b in letters if a != b]
    return "".join(" ".join(rng.sample(words, len(words))) + "\n" for _ in range(3))


CORPORA = {"english": english, "code": code, "mixed": mixed_scripts, "ties": ties}
HELD_OUT_EXTRA = "\nUnseen: Ωmega €uro ﬀ 🚀 Zebra-42  \t\t x\r\n\n\n   end <|endoftext|> [UNK] ▁marker"


def train_both(tmp_path, kind, text, extra_vocab):
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    base = 257 if kind == "bbpe" else 2 + len(set(text.replace(" ", "▁")))
    ours = train_tokenizer(kind, str(path), base + extra_vocab, progress=False)
    hf = train_with_hf(kind, str(path), base + extra_vocab)
    hf.encode_special_tokens = True  # as our encode: special tokens' text in plain text is just text
    return ours, hf


@pytest.mark.parametrize("corpus", CORPORA)
@pytest.mark.parametrize("kind", ["bpe", "bbpe"])
def test_identical_to_hugging_face(tmp_path, kind, corpus):
    make = CORPORA[corpus]
    ours, hf = train_both(tmp_path, kind, make(random.Random(1)), extra_vocab=400)
    assert (ours.vocab, ours.merges) == vocab_and_merges(hf)
    assert json.loads(ours.to_json()) == json.loads(hf.to_str())  # the whole tokenizer.json, field for field
    held_out = make(random.Random(2))[:5000] + HELD_OUT_EXTRA
    ids = ours.encode(held_out)
    assert ids == hf.encode(held_out).ids
    assert ours.encode_corpus(held_out).tolist() == ids
    ours.save(str(tmp_path / "ours.json"))
    from_file = tokenizers.Tokenizer.from_file(str(tmp_path / "ours.json"))
    from_file.encode_special_tokens = True
    assert from_file.encode(held_out).ids == ids
    if kind == "bbpe":
        assert ours.decode(ids) == held_out
        assert from_file.decode(ids) == held_out


@pytest.mark.parametrize("kind", ["bpe", "bbpe"])
def test_vocab_size_out_of_reach_stops_where_hugging_face_stops(tmp_path, kind):
    ours, hf = train_both(tmp_path, kind, "low lower lowest\nnew newer\n", extra_vocab=500)
    assert (ours.vocab, ours.merges) == vocab_and_merges(hf)
    assert ours.vocab_size < 257 + 500


def test_hugging_face_file_loads_as_ours(tmp_path):
    _, hf = train_both(tmp_path, "bpe", english(random.Random(3), 100), extra_vocab=100)
    hf.save(str(tmp_path / "hf.json"))
    tok = load_tokenizer(str(tmp_path / "hf.json"))
    assert tok.kind == "bpe" and tok.encode("the king's hat") == hf.encode("the king's hat").ids


def test_special_tokens_only_when_asked(tmp_path):
    for kind in ("bpe", "bbpe"):
        ours, hf = train_both(tmp_path, kind, english(random.Random(4), 200), extra_vocab=100)
        assert ours.eot_id == 0 and ours.id_to_token[0] == EOT
        text = f"the end{EOT}the start"
        assert ours.eot_id not in ours.encode(text)
        with_special = ours.encode(text, allowed_special=True)
        assert with_special.count(ours.eot_id) == 1
        hf.encode_special_tokens = False  # HF's default: special tokens are cut out of the text
        assert with_special == hf.encode(text).ids
        assert ours.decode(with_special) == text


def test_token_str(tmp_path):
    bpe, _ = train_both(tmp_path, "bpe", "the cat the hat\n" * 5, extra_vocab=20)
    assert bpe.token_str(bpe.vocab["▁the"]) == " the"
    bbpe, _ = train_both(tmp_path, "bbpe", "the cat the hat 😀\n" * 5, extra_vocab=20)
    assert bbpe.token_str(bbpe.vocab["Ġthe"]) == " the"
    assert bbpe.token_str(bbpe.vocab["ð"]) == "\ufffd"  # first byte of 😀 alone: an incomplete character


# --- every string round-trips under bbpe, and encodes as HF does -------------------------------------------------

@pytest.fixture(scope="module")
def bbpe_pair(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bbpe")
    ours, hf = train_both(tmp_path, "bbpe", mixed_scripts(random.Random(5)) + english(random.Random(6), 300),
                          extra_vocab=300)
    return ours, tokenizers.Tokenizer.from_str(ours.to_json()), Tokenizer.from_json(ours.to_json())


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60) | st.text(alphabet=" \t\n\r\u00a0\u3000abcé😀'1", max_size=60))
def test_bbpe_round_trip_any_unicode(bbpe_pair, text):
    ours, hf, restored = bbpe_pair
    ids = ours.encode(text)
    assert ours.decode(ids) == text
    assert hf.encode(text).ids == ids and hf.decode(ids) == text
    assert ours.encode_corpus(text).tolist() == ids
    assert restored.encode(text) == ids


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="the cat\n\tΩ😀▁ ", max_size=60))
def test_bpe_encodes_any_text_like_hugging_face(tmp_path_factory, text):
    tok = _bpe_for_property(tmp_path_factory)
    hf = tokenizers.Tokenizer.from_str(tok.to_json())
    hf.encode_special_tokens = True
    ids = tok.encode(text)
    assert hf.encode(text).ids == ids and tok.encode_corpus(text).tolist() == ids
    if not set(text) - set("the cat\n\t"):  # only characters seen in training, and no literal '▁'
        assert tok.decode(ids) == text


_cache = {}


def _bpe_for_property(tmp_path_factory):
    if "bpe" not in _cache:
        path = tmp_path_factory.mktemp("bpe") / "corpus.txt"
        path.write_text("the cat\n\tthe hat\n" * 10 + "tea  eat\n")
        _cache["bpe"] = train_tokenizer("bpe", str(path), 40, progress=False)
    return _cache["bpe"]
