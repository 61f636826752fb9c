"""classify.py learns with its defaults: an LM trained here, then fine-tuned; the probe, the auxiliary loss, baselines.

Read next: tests/test_classify.py (padding, checkpoints, reports, every bad input).
"""
import csv
import dataclasses
import io
import random

import pytest
import torch
import torch.nn.functional as F

import classifier_baselines as baselines
import classifier_data as cd
import classifier_finetune
import classify
from checkpoint import load_checkpoint, save_checkpoint
from config import ModelConfig, UserError
from gpt import GPT
from tokenizer import CharTokenizer

FIRST, SECOND = "abcdefghijklm", "nopqrstuvwxyz"  # two styles of text with disjoint letters


def style_text(letters: str, rng: random.Random) -> str:
    """A line of 3 to 7 made-up words of 2 to 6 letters, all drawn from `letters`."""
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(3, 7)))


def train_tiny_lm(path, corpus: str, steps: int = 150):
    """A 2 x 32 char-level GPT trained for `steps` steps on `corpus`, saved in playground.py's format; its losses."""
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(corpus)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=48, embedding_dim=32, num_of_layers=2,
                            num_of_heads=4))
    ids = torch.tensor(tokenizer.encode(corpus))  # (N,)
    optimizer = model.configure_optimizer(3e-3, 0.1)
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 49, (16,))  # (B,)
        x = torch.stack([ids[s:s + 48] for s in starts])  # (B, T)
        y = torch.stack([ids[s + 1:s + 49] for s in starts])  # (B, T)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    save_checkpoint(path, {"model": model.state_dict(), "model_config": dataclasses.asdict(model.config),
                           "tokenizer": tokenizer.to_json(), "step": steps})
    return losses


def test_default_settings_learn_an_easy_task(tmp_path):
    rng = random.Random(0)
    corpus = "\n".join(style_text(FIRST if i % 2 else SECOND, rng) for i in range(400))
    losses = train_tiny_lm(tmp_path / "lm.tar", corpus)
    assert sum(losses[-10:]) < 0.85 * sum(losses[:10])  # the LM did learn something
    rows = [(style_text(FIRST, rng), "first") if i % 2 else (style_text(SECOND, rng), "second") for i in range(200)]
    with open(tmp_path / "styles.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    cfg = classify.TrainClassifierConfig(data=str(tmp_path / "styles.csv"), checkpoint=str(tmp_path / "lm.tar"),
                                         out_dir=str(tmp_path / "out"), device="cpu", dtype="float32")
    result = classify.train(cfg, quiet=True)  # every training setting at its default
    assert result["val_accuracy"] >= 0.95 and result["fine_tune_accuracy"] >= 0.95
    assert result["val_accuracy"] >= result["probe_accuracy"]  # never below the probe, by construction
    assert result["bow_accuracy"] >= 0.95 and result["baseline_accuracy"] == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# The pieces


def tiny_classifier(pooling="mean", num_classes=2):
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=8, block_size=16, embedding_dim=32, num_of_layers=2, num_of_heads=4))
    return classify.GPTClassifier(gpt, num_classes, pooling).eval()


def test_auxiliary_lm_loss_is_the_next_token_loss_over_real_tokens_only():
    model = tiny_classifier()
    short, long = [1, 2, 3], [4, 5, 6, 7, 1, 2]
    idx, mask = cd.pad_batch([short, long])  # (2, 6), short padded with 3 positions
    logits, lm_loss = model.logits_and_lm_loss(idx, mask)
    per_text = []
    for ids in (short, long):  # each text alone, no padding: GPT.forward's own next-token loss, summed
        x = torch.tensor([ids])  # (1, T)
        _, loss = model.gpt(x[:, :-1], x[:, 1:])
        per_text.append(loss * (len(ids) - 1))
    assert torch.allclose(lm_loss, sum(per_text) / (len(short) - 1 + len(long) - 1), atol=1e-5)
    assert torch.allclose(logits, model(idx, mask), atol=1e-6)  # the same class logits as forward
    _, none = model.logits_and_lm_loss(torch.tensor([[3]]), torch.tensor([[True]]))
    assert none.item() == 0.0  # a one-token text has no next token: no loss, not NaN


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_cached_features_are_what_the_head_reads(pooling):
    model = tiny_classifier(pooling)
    texts = [[1, 2, 3], [4, 5, 6, 7, 1, 2], [3]]
    features = baselines.encode_features(model, texts, 2, torch.autocast("cpu", enabled=False), "cpu")  # (3, C)
    for i, ids in enumerate(texts):
        alone = model.features(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))  # (1, C)
        assert torch.allclose(features[i], alone[0], atol=1e-5)
        assert torch.allclose(model.head(features[i]), model(torch.tensor([ids]))[0], atol=1e-5)


def test_probe_fits_separable_features_and_keeps_its_best_weights():
    torch.manual_seed(0)
    train_f, val_f = torch.randn(200, 8), torch.randn(50, 8)  # (N, C)
    train_y, val_y = (train_f[:, 0] > 0).long().tolist(), (val_f[:, 0] > 0).long().tolist()
    head = torch.nn.Linear(8, 2)
    best = baselines.fit_probe(head, train_f, train_y, val_f, val_y, weight_decay=0.0)
    assert best["val_accuracy"] >= 0.9
    assert (head(val_f).argmax(-1) == best["val_preds"]).all()  # the head holds the best evaluation's weights
    assert abs(F.cross_entropy(head(val_f), torch.tensor(val_y)).item() - best["val_loss"]) < 1e-5


def test_a_fine_tune_worse_than_the_probe_falls_back_to_the_probe_and_says_so(tmp_path, monkeypatch, capsys):
    rng = random.Random(1)
    rows = [(style_text(FIRST, rng), "first") if i % 2 else (style_text(SECOND, rng), "second") for i in range(60)]
    with open(tmp_path / "styles.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    train_tiny_lm(tmp_path / "lm.tar", "\n".join(r[0] for r in rows), steps=20)

    def ruinous_step(model, optimizer, *args):  # a fine-tune that destroys the head
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.constant_(model.head.bias, 0.0).data[0] = 1.0  # always class 0
        return 1.0, 1.0

    monkeypatch.setattr(classifier_finetune, "train_step", ruinous_step)
    cfg = classify.TrainClassifierConfig(data=str(tmp_path / "styles.csv"), checkpoint=str(tmp_path / "lm.tar"),
                                         out_dir=str(tmp_path), device="cpu", dtype="float32", max_steps=20,
                                         eval_interval=5)
    result = classify.train(cfg)
    assert result["step"] == 0 and result["val_accuracy"] == result["probe_accuracy"] > 0.5
    assert "fine-tuning never beat the linear probe on the validation set: classifier.tar holds the probe" in \
        capsys.readouterr().out
    model, tokenizer, found = classify.load_classifier(str(tmp_path / "classifier.tar"), "cpu")
    assert found.step == 0 and model.head.weight.abs().sum() > 0  # the probe's head, not the ruined one


def test_bag_of_words_baseline():
    texts = ["abc abd", "abe acd", "xyz xzy", "zyx yxz"] * 5
    labels = [0, 0, 1, 1] * 5
    accuracy, seconds = baselines.bag_of_words(texts, labels, ["abd acd", "xzy zyx"], [0, 1])
    assert accuracy == 1.0 and seconds >= 0


def test_plays_demo_labels_passages_by_play():
    plays = cd.named_plays(["hamlet", "macbeth"])
    assert [(label, play) for label, play, _ in plays] == [("hamlet", "hamlet"), ("macbeth", "macbeth")]
    with pytest.raises(UserError, match="--plays needs two or more of: .*hamlet.*no play 'hamlett'"):
        cd.named_plays(["hamlett", "macbeth"])
    with pytest.raises(UserError, match="--plays needs two or more"):
        cd.named_plays(["hamlet"])
    cfg = classify.TrainClassifierConfig(data="plays", passages_per_play=20)
    train, val, source = cd.load_examples(cfg, CharTokenizer.train("abc"), 128, print)
    assert len(train) + len(val) == 40 and {e.label for e in val} == {"hamlet", "macbeth"}
    assert "built-in 'plays' demo" in source


def test_shuffle_one_line_reorders_the_words_of_one_long_line_only():
    passage = "Who's there?\nNay, answer me: stand, and unfold yourself.\nLong live the king!"
    for seed in range(20):
        shuffled = cd.shuffle_one_line(passage, random.Random(seed))
        before, after = passage.split("\n"), shuffled.split("\n")
        changed = [i for i in range(3) if before[i] != after[i]]
        assert len(changed) == 1 and changed[0] in (1, 2)  # "Who's there?" has two words: never chosen
        assert sorted(after[changed[0]].split()) == sorted(before[changed[0]].split())
    assert cd.shuffle_one_line("Who's there?\nFrancisco:", random.Random(0)) is None
    assert cd.shuffle_one_line("a b c d", random.Random(0)) != "a b c d"  # never the same order by chance


def test_order_demo_has_both_classes_in_every_play_the_same_words_and_whole_plays_held_out():
    cfg = classify.TrainClassifierConfig(data="order", passages_per_play=10, genres="tragedies")
    examples, groups, source = cd.demo_examples(cfg, CharTokenizer.train("abc"), 128)
    assert "built-in 'order' demo" in source
    for play in set(groups):
        labels = [e.label for e in examples if e.group == play]
        assert labels.count("shuffled") == labels.count("original") == 5
    assert all(len(e.text) <= 128 for e in examples)
    train, val, _ = cd.load_examples(cfg, CharTokenizer.train("abc"), 128, lambda line: None)
    assert not {e.group for e in train} & {e.group for e in val}
    assert {e.label for e in val} == {"original", "shuffled"}
    assert cd.load_examples(cfg, CharTokenizer.train("abc"), 128, lambda line: None)[1] == val  # seeded


def test_group_split_holds_out_whole_groups():
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    train, val = cd.group_split(groups, 0.25, seed=0)
    assert len(val) == 2 and groups[val[0]] == groups[val[1]] and sorted(train + val) == list(range(8))
    assert cd.group_split(groups, 0.99, seed=0)[0]  # never every group


# ---------------------------------------------------------------------------------------------------------------------
# predict --file


@pytest.fixture
def classifier_path(tmp_path):
    rng = random.Random(2)
    rows = [(style_text(FIRST, rng), "first") if i % 2 else (style_text(SECOND, rng), "second") for i in range(40)]
    with open(tmp_path / "styles.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    train_tiny_lm(tmp_path / "lm.tar", "\n".join(r[0] for r in rows), steps=5)
    classify.train(classify.TrainClassifierConfig(data=str(tmp_path / "styles.csv"), checkpoint=str(tmp_path / "lm.tar"),
                                                  out_dir=str(tmp_path), device="cpu", dtype="float32",
                                                  max_steps=10), quiet=True)
    return str(tmp_path / "classifier.tar")


@pytest.mark.parametrize("name, content", [
    ("texts.txt", "abc de fgh\n\nxyz wvu\n"),  # one text per line, blank lines skipped
    ("texts.csv", "id,text\n1,abc de fgh\n3,xyz wvu\n"),
    ("texts.jsonl", '{"text": "abc de fgh"}\n\n{"text": "xyz wvu"}\n'),
])
def test_predict_file_writes_a_csv_of_probabilities(classifier_path, tmp_path, capsys, name, content):
    (tmp_path / name).write_text(content)
    classify.main(["predict", "--checkpoint", classifier_path, "--device=cpu", "--file", str(tmp_path / name)])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["line"] for r in rows] == ["1", "3"] if name != "texts.csv" else ["2", "3"]
    assert [r["text"] for r in rows] == ["abc de fgh", "xyz wvu"]
    for r in rows:
        assert abs(float(r["p_first"]) + float(r["p_second"]) - 1) < 1e-3
        assert r["label"] == ("first" if float(r["p_first"]) > 0.5 else "second")
    classify.main(["predict", "--checkpoint", classifier_path, "--device=cpu", "--file", str(tmp_path / name),
                   "--out", str(tmp_path / "predictions.csv")])
    assert list(csv.DictReader(open(tmp_path / "predictions.csv"))) == rows
    assert "2 predictions written to" in capsys.readouterr().err
