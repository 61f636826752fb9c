"""classify.py: padding invariance, learning a separable task, checkpoints, reports, and every bad input."""
import csv
import hashlib
import json
import math
import re
import subprocess
import sys

import pytest
import torch

import classifier_data as cd
import classifier_report as report
import classifier_predict
import classify
from checkpoint import ClassifierCheckpoint, LanguageModelCheckpoint, load_checkpoint, save_checkpoint
from config import ModelConfig, UserError
from gpt import GPT
from tokenizer import CharTokenizer, train_tokenizer

ALPHABET = "abcxyz \n"


def tiny_gpt(vocab_size=len(ALPHABET), **overrides):
    settings = dict(vocab_size=vocab_size, block_size=16, embedding_dim=32, num_of_layers=2, num_of_heads=4)
    settings.update(overrides)
    return GPT(ModelConfig(**settings))


@pytest.fixture
def lm_checkpoint(tmp_path):
    """A (random-weight) language-model checkpoint in playground.py's format, with a char tokenizer."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(ALPHABET)
    model = tiny_gpt(tokenizer.vocab_size)
    path = tmp_path / "lm.tar"
    LanguageModelCheckpoint.of(model, tokenizer, step=0).save(path)
    return str(path)


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def separable_rows(n=40, seed=0):
    """Texts of 'a's labelled "alpha" and of 'b's labelled "beta", 2 to 24 characters (some past block_size=16)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 25, (n,), generator=g).tolist()
    return [("a" * n if i % 2 else "b" * n, "alpha" if i % 2 else "beta") for i, n in enumerate(lengths)]


def train_cfg(data, checkpoint, out_dir, **overrides):
    settings = dict(data=data, checkpoint=checkpoint, out_dir=str(out_dir), device="cpu", dtype="float32",
                    max_steps=40, eval_interval=10, batch_size=8, learning_rate=1e-2,
                    body_learning_rate=1e-3)
    settings.update(overrides)
    return classify.TrainClassifierConfig(**settings)


# ---------------------------------------------------------------------------------------------------------------------
# The head and the padding mask


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("backend", ["manual", "sdpa"])
def test_logits_of_a_text_do_not_change_when_batched_with_longer_texts(pooling, backend):
    torch.manual_seed(0)
    model = classify.GPTClassifier(tiny_gpt(attention_backend=backend), num_classes=3, pooling=pooling).eval()
    short = [1, 2, 3, 4]
    alone = model(torch.tensor([short]))  # (1, K), no padding at all
    idx, mask = cd.pad_batch([[5] * 16, short, [2, 7, 1, 0, 3, 3, 6, 5, 4]])  # short is padded with 12 positions
    batched = model(idx, mask)  # (3, K)
    assert torch.allclose(alone[0], batched[1], atol=1e-5)
    idx[1, 4:] = 7  # whatever sits in the padding is never read
    assert torch.allclose(model(idx, mask)[1], batched[1], atol=1e-6)


def test_pooling_reads_the_last_real_token_or_the_mean_of_real_tokens():
    model = classify.GPTClassifier(tiny_gpt(), 2)
    h = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)  # (B=2, T=3, C=2)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert model.pool(h, mask).tolist() == [[4.0, 5.0], [8.0, 9.0]]
    model.pooling = "mean"
    assert model.pool(h, mask).tolist() == [[2.0, 3.0], [7.0, 8.0]]


def test_loss_at_init_is_close_to_uniform_guessing():
    torch.manual_seed(0)
    model = classify.GPTClassifier(tiny_gpt(), num_classes=5)
    idx = torch.randint(0, len(ALPHABET), (16, 10))
    loss = torch.nn.functional.cross_entropy(model(idx), torch.randint(0, 5, (16,)))
    assert abs(loss.item() - math.log(5)) < 0.05


def test_pad_batch_worked_example():
    idx, mask = cd.pad_batch([[5, 6, 7], [8]])
    assert idx.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


# ---------------------------------------------------------------------------------------------------------------------
# Training end to end


def test_learns_a_separable_dataset_to_100_percent_then_predicts(lm_checkpoint, tmp_path, capsys):
    data = write_csv(tmp_path / "ab.csv", separable_rows())
    result = classify.train(train_cfg(data, lm_checkpoint, tmp_path / "out"))
    assert result["val_accuracy"] == 1.0
    assert result["classes"] == ["alpha", "beta"]
    out = capsys.readouterr().out
    assert "validation accuracy: majority class 50.0% | bag-of-words" in out and "confusion matrix" in out
    assert "longer than block_size=16 tokens and were cut to their first 16" in out

    state = load_checkpoint(tmp_path / "out" / "classifier.tar", expected_format=classify.FORMAT)
    assert state["classes"] == ["alpha", "beta"] and state["val_accuracy"] == 1.0
    classify.main(["predict", "--checkpoint", str(tmp_path / "out" / "classifier.tar"), "--device=cpu", "aaaaaa"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "alpha"  # the label first, then one line per class, most probable first
    assert lines[1].split()[0] == "alpha" and float(lines[1].split()[1]) > 0.5
    assert abs(sum(float(line.split()[1]) for line in lines[1:]) - 1.0) < 1e-3


def test_saved_classifier_gives_identical_logits(lm_checkpoint, tmp_path):
    data = write_csv(tmp_path / "ab.csv", separable_rows())
    classify.train(train_cfg(data, lm_checkpoint, tmp_path, max_steps=5), quiet=True)
    model, tokenizer, _ = classify.load_classifier(str(tmp_path / "classifier.tar"), "cpu")
    again, _, _ = classify.load_classifier(str(tmp_path / "classifier.tar"), "cpu")
    idx = torch.tensor([tokenizer.encode("abc xyz")])
    assert torch.equal(model(idx), again(idx))
    assert torch.allclose(classifier_predict.predict(model, tokenizer, "abc xyz"), torch.softmax(model(idx), -1)[0])


def test_freeze_body_trains_the_head_alone(lm_checkpoint, tmp_path):
    data = write_csv(tmp_path / "ab.csv", separable_rows())
    classify.train(train_cfg(data, lm_checkpoint, tmp_path, freeze_body=True, max_steps=5), quiet=True)
    before = load_checkpoint(lm_checkpoint)["model"]
    after = load_checkpoint(tmp_path / "classifier.tar", expected_format=classify.FORMAT)["model"]
    assert all(torch.equal(before[name], after[f"gpt.{name}"]) for name in before)
    assert after["head.weight"].abs().sum() > 0


def test_jsonl_with_numeric_labels_and_a_validation_file(lm_checkpoint, tmp_path):
    rows = [{"review": text, "stars": 1 if label == "alpha" else 5} for text, label in separable_rows()]
    for name, part in (("train.jsonl", rows[:30]), ("val.jsonl", rows[30:])):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in part) + "\n")
    result = classify.train(train_cfg(str(tmp_path / "train.jsonl"), lm_checkpoint, tmp_path, max_steps=5,
                                      text_column="review", label_column="stars",
                                      val_file=str(tmp_path / "val.jsonl")), quiet=True)
    assert result["classes"] == ["1", "5"]
    assert sum(sum(row) for row in result["confusion"]) == 10


# ---------------------------------------------------------------------------------------------------------------------
# Splits, the built-in demo, reports


def test_stratified_split_keeps_each_class_share_and_is_seeded():
    labels = ["a"] * 40 + ["b"] * 8 + ["c"] * 2 + ["d"]
    train, val = cd.stratified_split(labels, 0.25, seed=1)
    assert sorted(train + val) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in val) for c in "abcd"] == [10, 2, 1, 0]  # a lone example stays in training
    assert cd.stratified_split(labels, 0.25, seed=1) == (train, val)
    assert cd.stratified_split(labels, 0.25, seed=2) != (train, val)


def test_split_by_group_never_puts_one_group_on_both_sides():
    groups = [f"play{i // 5}" for i in range(40)]  # 8 plays of 5 passages
    labels = ["comedy" if i < 20 else "tragedy" for i in range(40)]
    train, val = cd.stratified_split(labels, 0.25, seed=0, groups=groups)
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert sorted({labels[i] for i in val}) == ["comedy", "tragedy"]


def test_builtin_passages_are_labelled_by_genre_and_split_by_play():
    plays = cd.shakespeare_plays(["comedies", "tragedies"])
    assert {"hamlet", "macbeth", "twelfth-night"} <= {play for _, play, _ in plays}
    examples = cd.shakespeare_passages(plays, max_chars=200, per_play=3, seed=0)
    assert len(examples) == 3 * len(plays) and {e.label for e in examples} == {"comedies", "tragedies"}
    assert all(e.label == "tragedies" for e in examples if e.group == "hamlet")
    assert all(e.text.strip() and "\n\n" not in e.text for e in examples)
    assert cd.shakespeare_passages(plays, 200, 3, seed=0) == examples
    with pytest.raises(UserError, match="no genre 'sonnets'.*comedies"):
        cd.shakespeare_plays(["sonnets"])


def test_passage_length_follows_the_tokenizer(tmp_path):
    text = "To be, or not to be, that is the question:\n" * 20
    assert cd.chars_that_fit(CharTokenizer.train(text), 128, text) == 128
    (tmp_path / "corpus.txt").write_text(text)
    bpe = train_tokenizer("bpe", str(tmp_path / "corpus.txt"), 60, progress=False)
    assert cd.chars_that_fit(bpe, 128, text) > 2 * 128  # a BPE token holds several characters


def test_worked_examples_in_docstrings():
    assert cd.chunk_lines(["ab", "cd", "efg"], 5) == ["ab\ncd", "efg"]
    assert cd.class_names(["pos", "neg", "pos"]) == ["neg", "pos"]
    assert cd.class_names(["10", "9", "2"]) == ["2", "9", "10"]
    assert report.confusion_matrix([0, 0, 1], [0, 1, 1], 2).tolist() == [[1, 1], [0, 1]]
    assert report.majority_baseline([0, 1, 1], [0, 1], 2) == (1, 0.5)
    precision, recall, f1 = report.per_class_scores(torch.tensor([[3, 1], [0, 4]]))
    assert precision.tolist() == [1.0, 0.8] and recall.tolist() == [0.75, 1.0]
    assert [round(x, 3) for x in f1.tolist()] == [0.857, 0.889]


def test_report_shows_precision_recall_and_the_confusion_matrix():
    text = report.format_report(torch.tensor([[3, 1], [0, 4]]), ["neg", "pos"])
    assert "neg            1.000   0.750   0.857        4" in text  # precision 3/3, recall 3/4, F1 6/7
    assert "pos            0.800   1.000   0.889        4" in text
    assert "accuracy 0.875, macro-F1 0.873" in text
    assert text.splitlines()[-1].split() == ["pos", "0", "4"]


def test_unknown_characters_are_removed_and_counted():
    tokenizer = CharTokenizer.train(ALPHABET)
    encoded = cd.encode_texts(tokenizer, ["abc", "abé!", "ééé"], block_size=2)
    assert encoded.ids == [tokenizer.encode("ab"), tokenizer.encode("ab"), []]
    assert encoded.unknown_chars == ["é", "!"] and encoded.texts_with_unknown == 2 and encoded.truncated == 1


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one clear error each


def expect_error(match, lm_checkpoint, tmp_path, rows=None, header=("text", "label"), **overrides):
    data = write_csv(tmp_path / "data.csv", rows if rows is not None else separable_rows(), header)
    with pytest.raises(UserError, match=match):
        classify.train(train_cfg(data, lm_checkpoint, tmp_path, max_steps=5, **{"overwrite": True, **overrides}),
                       quiet=True)  # overwrite: some tests train into tmp_path first; the error is what is tested


def test_missing_column_names_the_columns_there_are(lm_checkpoint, tmp_path):
    expect_error(r"no column 'text' \(its columns: 'sentence', 'label'\).*--text_column", lm_checkpoint, tmp_path,
                 header=("sentence", "label"))
    expect_error("no column 'sentiment'.*--label_column", lm_checkpoint, tmp_path, label_column="sentiment")


def test_one_class_only(lm_checkpoint, tmp_path):
    expect_error("every training example has the label 'pos'", lm_checkpoint, tmp_path,
                 rows=[("abc", "pos")] * 10)


def test_empty_texts_are_skipped_and_all_empty_is_an_error(lm_checkpoint, tmp_path, capsys):
    rows = separable_rows() + [("", "alpha"), ("   ", "beta"), ("abc", "")]
    data = write_csv(tmp_path / "data.csv", rows)
    classify.train(train_cfg(data, lm_checkpoint, tmp_path, max_steps=5))
    assert "skipped 3 row(s) with an empty text or label (line 42, 43, 44)" in capsys.readouterr().out
    expect_error("has no row with both a 'text' and a 'label'", lm_checkpoint, tmp_path, rows=[("", "a")] * 3)


def test_validation_label_unseen_in_training(lm_checkpoint, tmp_path):
    val = write_csv(tmp_path / "val.csv", [("abc", "alpha"), ("xyz", "gamma")])
    expect_error("validation label.* 'gamma' never occur in the training data", lm_checkpoint, tmp_path, val_file=val)


def test_wrong_checkpoints_are_refused(lm_checkpoint, tmp_path):
    expect_error("no language-model checkpoint at .*python playground.py", str(tmp_path / "none.tar"), tmp_path)
    state = load_checkpoint(lm_checkpoint)
    state["tokenizer"] = CharTokenizer.train("abc").to_json()  # 3 tokens for a model of 8
    mismatched = tmp_path / "mismatched.tar"
    save_checkpoint(mismatched, state)
    expect_error("its tokenizer has 3 tokens but its model 8", str(mismatched), tmp_path)
    classifier = tmp_path / "classifier.tar"
    lm = LanguageModelCheckpoint.load(lm_checkpoint)
    ClassifierCheckpoint(lm.model, lm.model_config, lm.tokenizer, classes=["a", "b"], pooling="last").save(classifier)
    expect_error("classifier.tar is a classifier; --checkpoint needs a language model", str(classifier), tmp_path)
    with pytest.raises(UserError, match="not a scratchgpt-classifier checkpoint .*classify.py train"):
        classify.main(["predict", "--checkpoint", lm_checkpoint, "hello"])


def test_command_line_errors_are_one_line_and_exit_1(tmp_path):
    result = subprocess.run([sys.executable, "classify.py", "train", str(tmp_path / "missing.csv"),
                             "--checkpoint", str(tmp_path / "none.tar")], capture_output=True, text=True,
                            cwd=classify.__file__.rsplit("/", 1)[0])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no language-model checkpoint" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(UserError, match="usage: python classify.py {train,predict}"):
        classify.main(["fit"])
    with pytest.raises(UserError, match="unknown flag --max_step; did you mean max_steps"):
        classify.main(["train", "--max_step=3"])


def test_curves_png_only_when_matplotlib_is_installed(tmp_path, monkeypatch):
    history = [{"step": 25, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5},
               {"step": 50, "train_loss": 0.8, "val_loss": 0.9, "val_accuracy": 0.6}]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: `import matplotlib` fails
    assert report.plot_curves(history, str(tmp_path / "curves.png"), 0.4) is None
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    assert report.plot_curves(history, str(tmp_path / "curves.png"), 0.4) == str(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(UserError, match="bad.jsonl line 2 is not valid JSON"):
        cd.read_examples(str(tmp_path / "bad.jsonl"), "text", "label")
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.csv is not UTF-8"):
        cd.read_examples(str(tmp_path / "latin1.csv"), "text", "label")
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    with pytest.raises(UserError, match="unknown file type .xlsx; use .csv, .tsv or .jsonl"):
        cd.read_examples(str(tmp_path / "data.xlsx"), "text", "label")
    with pytest.raises(UserError, match="no data file at .*missing.csv"):
        cd.read_examples(str(tmp_path / "missing.csv"), "text", "label")


# ---------------------------------------------------------------------------------------------------------------------
# Bad input from the command line: one line on stderr, exit 1, no file overwritten


def run_cli(*args):
    return subprocess.run([sys.executable, "classify.py", *map(str, args)], capture_output=True, text=True,
                          cwd=classify.__file__.rsplit("/", 1)[0])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(result, message):
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr


@pytest.mark.parametrize("rows, message", [
    ([("abc", "pos")] * 10, "error: every training example has the label 'pos'; a classifier needs two classes"),
    ([], r"error: .*data.csv has no row with both a 'text' and a 'label' value"),
])
def test_train_bad_data_on_the_command_line(lm_checkpoint, tmp_path, rows, message):
    data = write_csv(tmp_path / "data.csv", rows)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "classifier.tar").write_bytes(b"an earlier classifier")
    before = digest(tmp_path / "out" / "classifier.tar")
    result = run_cli("train", data, "--checkpoint", lm_checkpoint, "--out_dir", tmp_path / "out", "--device=cpu",
                     "--overwrite")  # even when told it may replace it, a failed run leaves the earlier one
    assert_one_line_error(result, message)
    assert digest(tmp_path / "out" / "classifier.tar") == before


def test_train_never_replaces_an_earlier_classifier_unless_told(lm_checkpoint, tmp_path):
    data = write_csv(tmp_path / "ab.csv", separable_rows())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "classifier.tar").write_bytes(b"an earlier classifier")
    result = run_cli("train", data, "--checkpoint", lm_checkpoint, "--out_dir", tmp_path / "out", "--device=cpu")
    assert_one_line_error(result, "classifier.tar holds an earlier classifier; pass --overwrite to replace it")
    assert (tmp_path / "out" / "classifier.tar").read_bytes() == b"an earlier classifier"
    classify.train(train_cfg(data, lm_checkpoint, tmp_path / "out", max_steps=2, overwrite=True), quiet=True)
    assert (tmp_path / "out" / "classifier.tar").read_bytes() != b"an earlier classifier"


@pytest.fixture
def classifier_checkpoint(lm_checkpoint, tmp_path):
    data = write_csv(tmp_path / "ab.csv", separable_rows())
    classify.train(train_cfg(data, lm_checkpoint, tmp_path / "trained", max_steps=2), quiet=True)
    return str(tmp_path / "trained" / "classifier.tar")


@pytest.mark.parametrize("name, content, message", [
    ("texts.jsonl", '{"text": "abc"}\n{"text": \n', r"texts.jsonl line 2 is not valid JSON"),
    ("texts.jsonl", '{"text": "abc"}\n{"label": "x"}\n', r"texts.jsonl line 2 has no text in 'text' \(found None\)"),
    ("texts.csv", "text,id\nabc,1\n,2\n", r"texts.csv line 3 has no text in 'text'"),
    ("texts.txt", "abc\n\u00e9\u00e9\n", r"texts.txt text on line 2 is empty \(or has no character the tokenizer know"),
    ("texts.txt", "\n\n", r"texts.txt has no text to classify"),
])
def test_predict_file_with_a_bad_line(classifier_checkpoint, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    (tmp_path / "predictions.csv").write_text("earlier predictions\n")
    before = digest(tmp_path / "predictions.csv")
    result = run_cli("predict", "--checkpoint", classifier_checkpoint, "--device=cpu", "--file", tmp_path / name,
                     "--out", tmp_path / "predictions.csv")
    assert_one_line_error(result, message)
    assert digest(tmp_path / "predictions.csv") == before


def test_predict_file_with_texts_longer_than_the_context_cuts_and_counts(classifier_checkpoint, tmp_path):
    (tmp_path / "texts.txt").write_text("a" * 40 + "\nabc\n" + "z" * 17 + "\n")  # block_size is 16
    result = run_cli("predict", "--checkpoint", classifier_checkpoint, "--device=cpu", "--file", tmp_path / "texts.txt")
    assert result.returncode == 0, result.stderr
    assert "note: 2 of 3 " in result.stderr and "longer than block_size=16 tokens were cut to their first 16" in \
        result.stderr
    assert len(result.stdout.splitlines()) == 4  # the header and one row per text
