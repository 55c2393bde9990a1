"""Text recipes, trained from scratch with a tokenizer learnt from the training split.

``text-classifier`` (task text_classification): lowercased word tokens, an embedding,
a 1-D convolution over it and masked mean + max pooling; labels from the records'
``text_class`` annotations.

``ner-tagger`` (task ner): word tokens with their code-point offsets (the record's
``tokens`` when it has them), BIO tags from its ``span`` annotations, an embedding and a
bidirectional GRU giving tag logits per token; rare and unseen words are looked up by
their shape (``[UNK:Xx]`` for an unseen capitalised word), so names never seen in
training still look like names. Metrics: token accuracy and span-level precision,
recall and F1 (exact match of start, end and label, as seqeval counts them).

Both leave TorchScript taking token ids, a LongTensor [batch, length] padded on the
right with 0, and a ``preprocess`` that says exactly how to make them::

    {"kind": "text", "tokenizer": {"pattern": ..., "lowercase": ..., "vocab": [...],
     "max_len": N, "pad_id": 0, "unk_id": 1, "unknown": "unk" | "shape"}}

``Tokenizer.from_json(preprocess["tokenizer"]).encode(text)`` is that recipe in code (the
model server uses it); for the tagger ``tagger_chunks`` cuts longer texts into chunks of
max_len tokens, and ``tags_to_spans`` turns its BIO tags back into spans.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loophub.training.context import TrainContext
from loophub.training.loop import (
    LoopConfig,
    evaluate_split,
    fit,
    recipe_random,
    seed_everything,
)
from loophub.training.recipes import Recipe
from loophub.training.recipes.labels import class_label, spans, trusted

PAD, UNK = "[PAD]", "[UNK]"
# words (with inner apostrophes and hyphens: don't, state-of-the-art) or one other
# non-space character; Python `re` semantics (\w is Unicode-aware)
WORD_PATTERN = r"\w+(?:['\u2019\-]\w+)*|[^\w\s]"
WHITESPACE_PATTERN = r"\S+"
MAX_SHAPE = 6
MAX_SHAPES = 64  # [UNK:shape] entries at most in a vocabulary


def word_shape(token: str) -> str:
    """A token's shape: each character as X (uppercase letter), x (other letter), d
    (digit) or itself, runs of the same symbol collapsed, cut to 6 symbols:
    ``Müller`` -> ``Xx``, ``2024`` -> ``d``, ``U.S.`` -> ``X.X.``, ``iPhone`` -> ``xXx``."""
    out: list[str] = []
    for char in token:
        symbol = ("X" if char.isupper() else "x" if char.isalpha() else
                  "d" if char.isdigit() else char)
        if not out or out[-1] != symbol:
            out.append(symbol)
    return "".join(out[:MAX_SHAPE])


@dataclass
class Tokenizer:
    """Word-level tokenizer: tokens are the matches of PATTERN (Python ``re``) in the
    text, lowercased (``str.lower``) when LOWERCASE, looked up in VOCAB (id = position);
    an unknown token is ``[UNK:<word_shape>]`` when UNKNOWN is "shape" and that entry is
    in the vocabulary, else ``[UNK]`` (id 1). ``[PAD]`` is id 0. At most MAX_LEN tokens
    per input."""

    pattern: str
    lowercase: bool
    vocab: list[str]
    max_len: int
    unknown: str = "unk"  # "unk" or "shape"

    def __post_init__(self) -> None:
        self._regex = re.compile(self.pattern)
        self._index = {token: i for i, token in enumerate(self.vocab)}

    # -- what the server does -------------------------------------------------------------

    def tokens(self, text: str) -> list[tuple[int, int]]:
        """[start, end) code-point offsets of the tokens of TEXT."""
        return [m.span() for m in self._regex.finditer(text) if m.end() > m.start()]

    def id_of(self, token: str) -> int:
        found = self._index.get(token.lower() if self.lowercase else token)
        return found if found is not None else self.unknown_id(token)

    def unknown_id(self, token: str) -> int:
        if self.unknown == "shape":
            found = self._index.get(f"[UNK:{word_shape(token)}]")
            if found is not None:
                return found
        return 1

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids (at most max_len) and their offsets in TEXT."""
        offsets = self.tokens(text)[:self.max_len]
        return [self.id_of(text[s:e]) for s, e in offsets], offsets

    def to_json(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "lowercase": self.lowercase, "vocab": self.vocab,
                "max_len": self.max_len, "pad_id": 0, "unk_id": 1, "unknown": self.unknown,
                "padding": "right", "truncation": "keep the first max_len tokens"}

    @classmethod
    def from_json(cls, data: dict) -> Tokenizer:
        return cls(pattern=data["pattern"], lowercase=bool(data["lowercase"]),
                   vocab=list(data["vocab"]), max_len=int(data["max_len"]),
                   unknown=data.get("unknown", "unk"))

    # -- learning it ------------------------------------------------------------------------

    @classmethod
    def learn(cls, texts: Iterable[list[str]], *, pattern: str, lowercase: bool,
              min_freq: int, max_vocab: int, max_len: int, shapes: bool) -> Tokenizer:
        """A vocabulary from the token lists TEXTS: [PAD], [UNK], the shapes of the words
        (when SHAPES; those seen at least MIN_FREQ times: what an unknown word is read as,
        learnt from the rare words and from word dropout), then the words seen at least
        MIN_FREQ times, most frequent first (ties alphabetically), MAX_VOCAB in all."""
        counts: Counter[str] = Counter()
        shape_counts: Counter[str] = Counter()
        for tokens in texts:
            for token in tokens:
                counts[token.lower() if lowercase else token] += 1
                if shapes:
                    shape_counts[word_shape(token)] += 1
        ranked = sorted((t for t, c in counts.items() if c >= min_freq),
                        key=lambda t: (-counts[t], t))
        room = max(0, max_vocab - 2)
        shape_entries = [f"[UNK:{s}]" for s, n in sorted(
            shape_counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_freq]
        shape_entries = shape_entries[:min(MAX_SHAPES, room // 4)]
        words = ranked[:room - len(shape_entries)]
        return cls(pattern=pattern, lowercase=lowercase,
                   vocab=[PAD, UNK, *shape_entries, *words], max_len=max_len,
                   unknown="shape" if shapes else "unk")


def check_pattern(pattern: str) -> str:
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise ValueError(f"params.pattern: {pattern!r} is not a regular expression ({exc}); "
                         "give a Python regex whose matches are the tokens, or leave it "
                         "empty for the default") from None
    if compiled.match(""):
        raise ValueError(f"params.pattern: {pattern!r} matches the empty string; each "
                         "match must be a token of at least one character")
    return pattern


def pad_batch(sequences: list, value: int):
    """LongTensor [batch, longest] of SEQUENCES (lists or tensors), right-padded."""
    import torch

    longest = max(1, max((len(s) for s in sequences), default=1))
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            out[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def _train_texts(ctx: TrainContext) -> Iterable[str]:
    for record in ctx.version.records("train"):
        if record.get("text"):
            yield record["text"]


# -- text classification ---------------------------------------------------------------------

TEXT_COMMON = {
    "epochs": (15, "passes over the training split"),
    "batch_size": (32, "samples per step on each rank"),
    "lr": (3e-3, "peak learning rate (one-cycle)"),
    "weight_decay": (1e-4, "AdamW weight decay"),
    "min_freq": (2, "a word enters the vocabulary when seen this often in the train split"),
    "max_vocab": (20000, "entries in the vocabulary at most ([PAD] and [UNK] included)"),
    "max_len": (128, "tokens per input at most (the first ones are kept)"),
    "pattern": ("", "Python regex whose matches are the tokens (empty: words and single "
                    "punctuation marks)"),
    "embedding_dim": (64, "size of the token embeddings"),
    "hidden": (128, "width of the convolution or of each GRU direction"),
    "dropout": (0.3, "dropout on embeddings and features"),
    "word_dropout": (0.05, "chance a known training word is read as unknown, so the model "
                           "learns what to make of words it has never seen"),
    "seed": (0, "random seed"),
    "checkpoint_every": (0, "steps between checkpoints (0: at each epoch's end)"),
    "num_workers": (0, "DataLoader worker processes per rank"),
}


def classifier_usable(record: dict) -> bool:
    return bool(record.get("text")) and class_label(record, "text_class") is not None


def text_classifier_model(vocab: int, classes: int, embedding_dim: int, hidden: int,
                          dropout: float):
    """Embedding -> Conv1d (width 3) + ReLU -> masked mean and max over the tokens ->
    linear. Padding (id 0) changes nothing: its embedding is zero and it is masked."""
    import torch
    import torch.nn as nn

    class TextClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, embedding_dim, padding_idx=0)
            with torch.no_grad():
                self.embed.weight[1].zero_()  # [UNK] starts neutral
            self.conv = nn.Conv1d(embedding_dim, hidden, 3, padding=1)
            self.drop = nn.Dropout(dropout)
            self.out = nn.Linear(2 * hidden, classes)

        def forward(self, ids):
            mask = (ids != 0).unsqueeze(-1).to(torch.float32)        # [B, L, 1]
            x = self.drop(self.embed(ids))                             # [B, L, E]
            h = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2) * mask
            mean = h.sum(1) / mask.sum(1).clamp_min(1.0)
            top = h.max(1).values                                     # h >= 0, pads are 0
            return self.out(self.drop(torch.cat([mean, top], 1)))

    return TextClassifier()


def confusion_counts(classes: int):
    import torch

    def evaluate(logits, targets) -> dict[str, Any]:
        index = targets * classes + logits.argmax(-1)
        confusion = torch.bincount(index.flatten().cpu(), minlength=classes * classes)
        return {"confusion": confusion.view(classes, classes)}
    return evaluate


def classification_metrics(sums: dict) -> dict[str, float]:
    """Accuracy and macro F1 (over the classes present in the split) from the summed
    confusion matrix (rows: truth, columns: prediction)."""
    confusion = sums.get("confusion")
    if confusion is None or float(confusion.sum()) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0, "n": 0.0}
    tp = confusion.diagonal()
    truth, predicted = confusion.sum(1), confusion.sum(0)
    f1 = 2 * tp / (truth + predicted).clamp_min(1)
    present = truth > 0
    return {"accuracy": float(tp.sum() / confusion.sum()),
            "macro_f1": float(f1[present].mean()), "n": float(confusion.sum())}


def train_text_classifier(ctx: TrainContext) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    p = ctx.params
    if ctx.label_schema.get("multi_label"):
        raise ValueError("the text-classifier recipe trains single-label classification; "
                         "the dataset is multi-label")
    labels = ctx.label_names
    if len(labels) < 2:
        raise ValueError(f"the dataset's label schema has {len(labels)} class(es); "
                         "classification needs at least 2")
    index = {name: i for i, name in enumerate(labels)}
    pattern = check_pattern(p["pattern"] or WORD_PATTERN)
    lowercase = True
    regex = re.compile(pattern)
    tokenizer = Tokenizer.learn(
        ([m.group() for m in regex.finditer(text)] for text in _train_texts(ctx)),
        pattern=pattern, lowercase=lowercase, min_freq=int(p["min_freq"]),
        max_vocab=int(p["max_vocab"]), max_len=int(p["max_len"]), shapes=False)
    ctx.log(f"vocabulary: {len(tokenizer.vocab)} entries")

    word_dropout = float(p["word_dropout"])

    def sample(record: dict, training: bool) -> tuple:
        label = class_label(record, "text_class")
        if label not in index:
            raise ValueError(f"record {record.get('id')!r}: label {label!r} is not a class "
                             f"of the label schema ({', '.join(labels)})")
        ids, _ = tokenizer.encode(record.get("text") or "")
        if training and word_dropout:
            ids = [1 if recipe_random.random() < word_dropout else i for i in ids]
        return ids, index[label]

    def split(name: str, training: bool = False):
        return ctx.data(name, transform=lambda record, _: sample(record, training))

    def collate(batch: list) -> tuple:
        return (pad_batch([ids for ids, _ in batch], 0),
                torch.tensor([label for _, label in batch], dtype=torch.long))

    seed_everything(int(p["seed"]))  # the same initial weights on every rank and run
    model = text_classifier_model(len(tokenizer.vocab), len(labels), int(p["embedding_dim"]),
                                  int(p["hidden"]), float(p["dropout"]))
    config = LoopConfig.from_params(p, checkpoint_every=int(p["checkpoint_every"]) or None)
    evaluate = confusion_counts(len(labels))

    def loss_fn(logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=0.05)

    val = split("val") if ctx.version.count("val") else None
    best = fit(ctx, model, train=split("train", training=True), val=val,
               loss_fn=loss_fn, evaluate=evaluate, config=config, collate=collate,
               summarize=classification_metrics, monitor="val_accuracy")
    final = dict(best)
    if ctx.version.count("test"):
        final.update(evaluate_split(ctx, model, split("test"), evaluate, config.batch_size,
                                    prefix="test", collate=collate,
                                    summarize=classification_metrics))
    ctx.final(**final)
    example = torch.ones(1, tokenizer.max_len, dtype=torch.long)
    ctx.save_model(model, example, preprocess={"kind": "text",
                                               "tokenizer": tokenizer.to_json()},
                   labels=labels,
                   extra={"recipe": p.get("_recipe", ""),
                          "outputs": {"logits": "[batch, classes] (softmax: probabilities); "
                                                "input: token ids [batch, length <= max_len]"
                                                ", padded on the right with 0"}})
    return final


# -- NER ------------------------------------------------------------------------------------


def ner_usable(record: dict) -> bool:
    """A text whose spans are people's: one with trusted spans, or one without any span
    (no entity in it); not one whose only spans are a model's or rejected ones."""
    if not record.get("text"):
        return False
    found = [a for a in record.get("annotations") or () if a.get("type") == "span"]
    return not found or any(trusted(a) for a in found)


def tag_names(classes: list[str]) -> list[str]:
    """O, then B- and I- of each class in the label schema's order."""
    return ["O", *(f"{prefix}-{name}" for name in classes for prefix in ("B", "I"))]


def bio_tags(offsets: list[tuple[int, int]], found: list[tuple[int, int, str]],
             classes: set[str]) -> list[str]:
    """A BIO tag per token: a token overlapping a span is in it (B- on the first such
    token, I- after); of overlapping spans the earlier one wins."""
    tags = ["O"] * len(offsets)
    for start, end, label in found:
        if label not in classes:
            continue
        inside = [i for i, (s, e) in enumerate(offsets)
                  if s < end and e > start and tags[i] == "O"]
        for n, i in enumerate(inside):
            tags[i] = ("B-" if n == 0 else "I-") + label
    return tags


def tags_to_spans(tags: list[str], offsets: list[tuple[int, int]] | None = None
                  ) -> list[tuple[int, int, str]]:
    """Spans from BIO TAGS, as seqeval reads them: a span starts at B-X, or at I-X after
    anything but B-X/I-X, and runs over the I-X that follow. With OFFSETS the spans are
    (start, end, label) in code points of the text; without, token indices [start, end)."""
    found: list[tuple[int, int, str]] = []
    current: list[Any] | None = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = current is not None and prefix == "I" and label == current[2]
        if current is not None and not continues:
            found.append((current[0], i, current[2]))
            current = None
        if prefix in ("B", "I") and label and not continues:
            current = [i, i + 1, label]
    if offsets is None:
        return found
    return [(offsets[s][0], offsets[e - 1][1], label) for s, e, label in found]


def tagger_model(vocab: int, tags: int, embedding_dim: int, hidden: int, dropout: float):
    """Embedding -> a forward GRU and a backward GRU (the backward one reads each
    sequence reversed within its own length, so right padding never reaches a real
    token) -> linear to tag logits per token."""
    import torch
    import torch.nn as nn

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, embedding_dim, padding_idx=0)
            self.forward_rnn = nn.GRU(embedding_dim, hidden, batch_first=True)
            self.backward_rnn = nn.GRU(embedding_dim, hidden, batch_first=True)
            self.drop = nn.Dropout(dropout)
            self.out = nn.Linear(2 * hidden, tags)

        def forward(self, ids):
            lengths = (ids != 0).sum(1, keepdim=True)                  # [B, 1]
            position = torch.cumsum(torch.ones_like(ids), 1) - 1       # [B, L]
            reverse = torch.where(position < lengths, lengths - 1 - position, position)
            x = self.drop(self.embed(ids))
            ahead, _ = self.forward_rnn(x)
            flipped = x.gather(1, reverse.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            back, _ = self.backward_rnn(flipped)
            back = back.gather(1, reverse.unsqueeze(-1).expand(-1, -1, back.shape[-1]))
            return self.out(self.drop(torch.cat([ahead, back], -1)))

    return Tagger()


def span_counts(tags: list[str]):
    """evaluate(logits [B, L, T], targets [B, L] with -100 at padding): token and span
    counts, summable over batches and ranks."""
    def evaluate(logits, targets) -> dict[str, float]:
        predicted = logits.argmax(-1).cpu()
        targets = targets.cpu()
        real = targets != -100
        counts = {"correct": float(((predicted == targets) & real).sum()),
                  "tokens": float(real.sum()), "tp": 0.0, "predicted": 0.0, "gold": 0.0}
        for row in range(targets.shape[0]):
            n = int(real[row].sum())
            gold = set(tags_to_spans([tags[t] for t in targets[row, :n].tolist()]))
            guess = set(tags_to_spans([tags[t] for t in predicted[row, :n].tolist()]))
            counts["tp"] += len(gold & guess)
            counts["predicted"] += len(guess)
            counts["gold"] += len(gold)
        return counts
    return evaluate


def span_metrics(sums: dict) -> dict[str, float]:
    tp, predicted, gold = sums.get("tp", 0.0), sums.get("predicted", 0.0), sums.get("gold", 0.0)
    precision = tp / predicted if predicted else 0.0
    recall = tp / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"token_accuracy": sums.get("correct", 0.0) / (sums.get("tokens", 0.0) or 1.0),
            "precision": precision, "recall": recall, "f1": f1,
            "tokens": sums.get("tokens", 0.0)}


def choose_pattern(ctx: TrainContext) -> str:
    """The pattern that reproduces the token boundaries of the training records that have
    them (CoNLL imports: tokens joined by spaces, so \\S+, also when words and punctuation
    would do as well); WORD_PATTERN when none has tokens or it reproduces more."""
    agree = Counter()
    for record in ctx.version.records("train"):
        given = record.get("tokens")
        if not given or not record.get("text"):
            continue
        for pattern in (WORD_PATTERN, WHITESPACE_PATTERN):
            found = [list(m.span()) for m in re.finditer(pattern, record["text"])]
            agree[pattern] += found == [list(t) for t in given]
    if agree[WHITESPACE_PATTERN] and agree[WHITESPACE_PATTERN] >= agree[WORD_PATTERN]:
        return WHITESPACE_PATTERN
    return WORD_PATTERN


def record_offsets(record: dict, regex) -> list[tuple[int, int]]:
    text = record.get("text") or ""
    given = record.get("tokens")
    if given:
        return [(int(s), int(e)) for s, e in given if 0 <= s < e <= len(text)]
    return [m.span() for m in regex.finditer(text) if m.end() > m.start()]


def tagger_chunks(tokenizer: Tokenizer, text: str, offsets: list[tuple[int, int]]
                  ) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """The tagger's inputs for TEXT tokenized at OFFSETS ([start, end) code points: the
    record's own tokens, ``record_offsets``, or ``tokenizer.tokens(text)``): token ids
    and their offsets in chunks of ``max_len`` tokens, at least one (empty for a text
    without tokens). Training and its validation read the first chunk only (the first
    max_len tokens); the model server and loophub.models.predictor tag every chunk."""
    step = max(1, tokenizer.max_len)
    chunks = [offsets[i:i + step] for i in range(0, len(offsets), step)] or [[]]
    return [([tokenizer.id_of(text[s:e]) for s, e in chunk], chunk) for chunk in chunks]


def train_ner(ctx: TrainContext) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    p = ctx.params
    classes = ctx.label_names
    if not classes:
        raise ValueError("the dataset's label schema has no classes; a NER tagger needs "
                         "the entity types as classes")
    tags = tag_names(classes)
    tag_index = {t: i for i, t in enumerate(tags)}
    pattern = check_pattern(p["pattern"]) if p["pattern"] else choose_pattern(ctx)
    regex = re.compile(pattern)
    max_len = int(p["max_len"])

    def words() -> Iterable[list[str]]:
        for record in ctx.version.records("train"):
            text = record.get("text") or ""
            yield [text[s:e] for s, e in record_offsets(record, regex)]
    tokenizer = Tokenizer.learn(words(), pattern=pattern, lowercase=bool(p["lowercase"]),
                                min_freq=int(p["min_freq"]), max_vocab=int(p["max_vocab"]),
                                max_len=max_len, shapes=True)
    ctx.log(f"vocabulary: {len(tokenizer.vocab)} entries; tokens by {pattern!r}; "
            f"tags: {', '.join(tags)}")
    names = set(classes)
    word_dropout = float(p["word_dropout"])

    def encode(record: dict, training: bool) -> tuple:
        text = record.get("text") or ""
        ids, offsets = tagger_chunks(tokenizer, text, record_offsets(record, regex))[0]
        if training:  # learn to tag words never seen; random() for known words only, as it
            # always was, so a seed still gives the same run
            ids = [tokenizer.unknown_id(text[s:e])
                   if found > 1 and recipe_random.random() < word_dropout else found
                   for found, (s, e) in zip(ids, offsets, strict=True)]
        labels = [tag_index[t] for t in bio_tags(offsets, spans(record), names)]
        return ids, labels

    def collate(batch: list) -> tuple:
        return pad_batch([i for i, _ in batch], 0), pad_batch([t for _, t in batch], -100)

    seed_everything(int(p["seed"]))  # the same initial weights on every rank and run
    model = tagger_model(len(tokenizer.vocab), len(tags), int(p["embedding_dim"]),
                         int(p["hidden"]), float(p["dropout"]))
    config = LoopConfig.from_params(p, checkpoint_every=int(p["checkpoint_every"]) or None)
    evaluate = span_counts(tags)

    def loss_fn(logits, targets):
        if not bool((targets != -100).any()):  # a batch of texts without tokens
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100)

    def split(name: str, training: bool = False):
        return ctx.data(name, transform=lambda record, _: encode(record, training))

    val = split("val") if ctx.version.count("val") else None
    best = fit(ctx, model, train=split("train", training=True), val=val, loss_fn=loss_fn,
               evaluate=evaluate, config=config, collate=collate, summarize=span_metrics,
               monitor="val_f1")
    final = dict(best)
    if ctx.version.count("test"):
        final.update(evaluate_split(ctx, model, split("test"), evaluate, config.batch_size,
                                    prefix="test", collate=collate, summarize=span_metrics))
    ctx.final(**final)
    example = torch.ones(1, max_len, dtype=torch.long)
    ctx.save_model(model, example,
                   preprocess={"kind": "text", "tokenizer": tokenizer.to_json(), "tags": tags,
                               "scheme": "BIO"},
                   labels=classes,
                   extra={"recipe": p.get("_recipe", ""),
                          "outputs": {"logits": "[batch, length, tags] (argmax: a tag index "
                                                "into preprocess.tags per token); input: "
                                                "token ids [batch, length], padded on the "
                                                "right with 0; longer texts in chunks of "
                                                "max_len tokens",
                                      "spans": "loophub.training.recipes.text:tags_to_spans"
                                               "(tags, offsets)"}})
    return final


RECIPES = [
    Recipe("text-classifier", ("text_classification",),
           "word tokens learnt from the train split, an embedding and a 1-D convolution "
           "with mean and max pooling, trained from scratch",
           params=dict(TEXT_COMMON), usable=classifier_usable, train=train_text_classifier),
    Recipe("ner-tagger", ("ner",),
           "word tokens (case kept; unseen words by their shape), an embedding and a "
           "bidirectional GRU tagging each token B-/I-/O, trained from scratch; span F1",
           params={**TEXT_COMMON, "epochs": (25, TEXT_COMMON["epochs"][1]),
                   "lr": (1e-2, TEXT_COMMON["lr"][1]),
                   "hidden": (64, TEXT_COMMON["hidden"][1]),
                   "dropout": (0.25, TEXT_COMMON["dropout"][1]),
                   "pattern": ("", "Python regex whose matches are the tokens (empty: \\S+ "
                                   "when the records' tokens are whitespace-separated, else "
                                   "words and single punctuation marks)"),
                   "lowercase": (False, "lowercase tokens before lookup (shapes still see "
                                        "the case)"),
                   "word_dropout": (0.1, "chance a known training word is read as unknown "
                                          "(by its shape), so names never seen are tagged")},
           usable=ner_usable, train=train_ner),
]
