"""Reading data: one module, one rule per file type, one error type.

Every command and API that reads a file comes here: ``embed`` and ``fit-whitening`` (texts),
``evaluate`` (STS pairs, classification sets, BEIR retrieval folders), ``train`` (scored pairs,
pairs, triplets, pairs made from a corpus, the passages queries are written for) and the Ray
reader (its CSV/TSV rows).

- **TSV** (``.tsv`` and any other suffix with tab-separated columns) has no quoting: a field runs
  from tab to tab, and a ``"`` is an ordinary character (as in the GLUE and STS-B files).
- **CSV** (``.csv``) follows RFC 4180: fields may be quoted, and a quoted field may hold commas,
  quotes (doubled) and newlines.
- **JSONL** (``.jsonl``, ``.json``): one JSON object per line; blank lines are skipped.

A file that cannot be read raises :class:`DataError`, whose message names the file, the line
where there is one, and the fix.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np


class DataError(ValueError):
    """A data file that is missing, malformed or empty; the message names the file and the fix."""


def table_reader(handle: IO[str], name: str) -> Any:
    """A ``csv.reader`` with this module's rule for ``name``'s type: RFC 4180 quoting for ``.csv``,
    none for tab-separated files."""
    if str(name).lower().endswith(".csv"):
        return csv.reader(handle)
    return csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)


def table_records(handle: IO[str], name: str) -> Iterator[dict[str, str]]:
    """Rows of a CSV/TSV file with a header line as ``{column: value}`` dicts (a short row gives
    ``""`` for its missing columns; empty lines are skipped)."""
    reader = table_reader(handle, name)
    header = next(reader, None) or []
    for row in reader:
        if row:
            yield {column: row[i] if i < len(row) else "" for i, column in enumerate(header)}


# ---------------------------------------------------------------------------- texts

def read_texts(path: str, column: str | None = None) -> Iterator[str]:
    """Texts read lazily: whole lines (without their newline), or one column of a delimited file."""
    handle = sys.stdin if path == "-" else open(path, encoding="utf-8", newline="")  # noqa: SIM115
    try:
        if column is None:
            for line in handle:
                yield line.rstrip("\r\n")
            return
        reader = table_reader(handle, path)
        header = next(reader, None) or []
        if column not in header:
            raise DataError(f"{path} has no column {column!r}; its columns are {header}")
        index = header.index(column)
        for row in reader:
            if row:
                yield row[index] if index < len(row) else ""
    finally:
        if handle is not sys.stdin:
            handle.close()


# ---------------------------------------------------------------------------- evaluation sets


def read_table(path: str | Path, columns: Sequence[str]) -> list[list[str]]:
    """Rows of the named columns from a TSV or CSV file with a header line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8", newline="") as f:
        reader = table_reader(f, path.name)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))}; the header has {header}")
        index = [header.index(c) for c in columns]
        rows = [[row[i] for i in index] for row in reader if row]
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


@dataclass
class Classification:
    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]


def read_classification(train: str, test: str | None, columns: Sequence[str], test_fraction: float = 0.2) -> Classification:
    """Train and test files, or one file split (stratified, seed 0) when ``test`` is None."""
    rows = read_table(train, columns)
    if test is None:
        from sklearn.model_selection import train_test_split

        labels = [r[1] for r in rows]
        counts = {label: labels.count(label) for label in set(labels)}
        stratify = labels if min(counts.values()) >= 2 else None
        train_rows, test_rows = train_test_split(rows, test_size=test_fraction, random_state=0, stratify=stratify)
    else:
        train_rows, test_rows = rows, read_table(test, columns)
    unseen = sorted({r[1] for r in test_rows} - {r[1] for r in train_rows})
    if unseen:
        raise DataError(f"{test or train}: labels {unseen[:5]} appear in the test split but never in training")
    return Classification(
        Path(train).stem, [r[0] for r in train_rows], [r[1] for r in train_rows], [r[0] for r in test_rows], [r[1] for r in test_rows]
    )


@dataclass
class Retrieval:
    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: no such file (a BEIR folder has corpus.jsonl, queries.jsonl and qrels/test.tsv)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_retrieval(folder: str | Path, split: str = "test") -> Retrieval:
    folder = Path(folder)
    corpus = {str(d["_id"]): " ".join(p for p in (d.get("title", ""), d.get("text", "")) if p) for d in _jsonl(folder / "corpus.jsonl")}
    queries = {str(q["_id"]): q["text"] for q in _jsonl(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    for query_id, doc_id, score in read_table(folder / "qrels" / f"{split}.tsv", ["query-id", "corpus-id", "score"]):
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    qrels = {q: r for q, r in qrels.items() if q in queries}
    if not corpus or not qrels:
        raise DataError(f"{folder}: the corpus or the judged queries are empty")
    return Retrieval(folder.name, corpus, {q: queries[q] for q in qrels}, qrels)


def sample_corpus(task: Retrieval, size: int, seed: int = 0) -> Retrieval:
    """The task over at most ``size`` documents: every judged document of its queries, then
    others drawn at random (``seed``), in corpus order. Shows how a method ranks among
    distractors at a fraction of the cost of the full corpus."""
    judged = {doc for relevance in task.qrels.values() for doc in relevance if doc in task.corpus}
    others = sorted(set(task.corpus) - judged)
    rng = np.random.default_rng(seed)
    extra = max(size - len(judged), 0)
    keep = judged | set(rng.permutation(others)[:extra].tolist()) if others else judged
    return Retrieval(task.name, {d: t for d, t in task.corpus.items() if d in keep}, task.queries, task.qrels)


# ---------------------------------------------------------------------------- training data


Kind = Literal["scored", "pairs", "triplets"]
KNOWN_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("sentence1", "sentence2"),
    ("anchor", "positive", "negative"),
    ("anchor", "positive"),
    ("query", "positive", "negative"),
    ("query", "positive"),
    ("query", "document"),
    ("text1", "text2"),
)
DATASET_COLUMNS = {"scored": ("sentence1", "sentence2"), "pairs": ("anchor", "positive"), "triplets": ("anchor", "positive", "negative")}


@dataclass
class TrainingData:
    """Rows of one shape: texts (two or three) and, for ``scored``, the score last."""

    kind: Kind
    rows: list[tuple]
    source: str
    columns: tuple[str, ...] = ()
    """The columns the texts were read from, in order (empty for pairs made from a corpus)."""

    def dataset(self) -> Any:
        from datasets import Dataset

        columns = DATASET_COLUMNS[self.kind]
        data: dict[str, list] = {c: [r[i] for r in self.rows] for i, c in enumerate(columns)}
        if self.kind == "scored":
            data["score"] = [float(r[-1]) for r in self.rows]
        return Dataset.from_dict(data)

    def __len__(self) -> int:
        return len(self.rows)


def _records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Header and ``(line number, row)`` records of a TSV, CSV or JSONL file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() in (".jsonl", ".json"):
        records = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not a JSON object ({error.msg}); write one object per line") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
                records.append((number, record))
        header = list(records[0][1]) if records else []
        return header, records
    with path.open(encoding="utf-8", newline="") as f:
        reader = table_reader(f, path.name)
        header = next(reader, None) or []
        records = [(number, dict(zip(header, row))) for number, row in enumerate(reader, 2) if row]
        return header, records


def read_training_file(path: str | Path, text_columns: Sequence[str] | None = None, score_column: str | None = None) -> TrainingData:
    """One training file, checked row by row: a bad row fails with its file, line and the fix."""
    path = Path(path)
    header, records = _records(path)
    if not records:
        raise DataError(f"{path}: no rows after the header")
    if text_columns:
        columns = tuple(text_columns)
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))}; the header has {header}")
    else:
        columns = next((c for c in KNOWN_COLUMNS if all(name in header for name in c)), ())
        if not columns:
            # sentence-transformers' rule for unknown names: the text columns in order, the score apart
            texts = [c for c in header if c not in ("score", "label")]
            if len(texts) not in (2, 3):
                example = ",".join(texts[:3]) if len(texts) > 3 else "anchor,positive,negative"
                raise DataError(
                    f"{path}: cannot tell which columns hold the texts (the header has {header}, {len(texts)} besides a score); "
                    f"name two (a pair) or three (anchor, positive, negative) with --text-columns, e.g. --text-columns {example}"
                )
            columns = tuple(texts)
    if len(columns) not in (2, 3):
        raise DataError(f"{path}: give two text columns (a pair) or three (anchor, positive, negative), got {list(columns)}")
    score = score_column if score_column is not None else ("score" if "score" in header and len(columns) == 2 else None)
    if score is not None and score not in header:
        raise DataError(f"{path}: no score column {score!r}; the header has {header}")
    kind: Kind = "triplets" if len(columns) == 3 else "scored" if score else "pairs"
    rows = []
    for number, record in records:
        texts = []
        for column in columns:
            value = record.get(column)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}:{number}: column {column!r} is {'missing' if value is None else 'empty'}; every row needs its texts (fix or drop the row)")
            texts.append(value)
        if score:
            try:
                value = float(record.get(score))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DataError(f"{path}:{number}: score {record.get(score)!r} in column {score!r} is not a number") from None
            if not math.isfinite(value):
                raise DataError(f"{path}:{number}: score {value} in column {score!r} is not finite")
            texts.append(value)
        rows.append(tuple(texts))
    return TrainingData(kind, rows, str(path), columns)


def read_training_files(paths: Sequence[str | Path], text_columns: Sequence[str] | None = None, score_column: str | None = None) -> TrainingData:
    """Several files of one shape, concatenated in order."""
    parts = [read_training_file(p, text_columns, score_column) for p in paths]
    kinds = {p.kind for p in parts}
    if len(kinds) > 1:
        raise DataError(f"training files of different shapes cannot be mixed: {', '.join(f'{p.source} ({p.kind})' for p in parts)}")
    return TrainingData(parts[0].kind, [r for p in parts for r in p.rows], ", ".join(p.source for p in parts), parts[0].columns)


@dataclass(frozen=True)
class Passage:
    """One passage of a corpus to write queries for; ``where`` names its file and line (or row)."""

    id: str
    text: str
    title: str = ""
    where: str = ""

    @property
    def full_text(self) -> str:
        """The text as it is embedded and prompted: ``title. text``, or the text alone."""
        return f"{self.title}. {self.text}" if self.title else self.text


def read_passages(path: str | Path, column: str | None = None) -> list[Passage]:
    """The passages of a corpus, checked whole before any model work:

    - a BEIR ``corpus.jsonl`` or any JSONL file: one object per line, the text in ``text`` (or
      ``column``), the id in ``_id`` or ``id`` (else the line number), an optional ``title``;
    - a Parquet file: the ``column`` (default ``text``) of each row, ids as in JSONL;
    - any other file: paragraphs separated by blank lines (a paragraph's lines joined by spaces),
      no titles.

    A row without text, with a text that is not a string, or with an id seen before raises
    :class:`DataError` naming the file and line (or row)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pylist()
        records = [(f"{path} row {i}", str(i), record) for i, record in enumerate(table)]
    elif suffix in (".jsonl", ".json"):
        records = [(f"{path}:{number}", str(number), record) for number, record in _records(path)[1]]
    else:
        passages, lines, start = [], [], 0
        for number, line in enumerate([*path.read_text(encoding="utf-8").splitlines(), ""], 1):
            if line.strip():
                start = start or number
                lines.append(line.strip())
            elif lines:
                passages.append(Passage(f"p{len(passages)}", " ".join(lines), "", f"{path}:{start}"))
                lines, start = [], 0
        if not passages:
            raise DataError(f"{path}: no passages (paragraphs separated by blank lines)")
        return passages
    field = column or "text"
    passages, seen = [], {}
    for where, number, record in records:
        text = record.get(field)
        if not isinstance(text, str) or not text.strip():
            found = "no such field" if field not in record else f"{type(text).__name__} {text!r}"[:60]
            raise DataError(f"{where}: expected a non-empty text in {field!r}, got {found}; its fields are {sorted(record)}")
        ident = str(record.get("_id", record.get("id", number)))
        if ident in seen:
            raise DataError(f"{where}: id {ident!r} was already used at {seen[ident]}")
        seen[ident] = where
        title = record.get("title") or ""
        passages.append(Passage(ident, text.strip(), str(title).strip(), where))
    if not passages:
        raise DataError(f"{path}: no passages")
    return passages


def pairs_from_corpus(path: str | Path, min_chars: int = 20) -> TrainingData:
    """Training pairs made from unlabelled documents, for adapting a retriever to a corpus without
    labels: a BEIR ``corpus.jsonl`` gives (title, text) pairs; a text file gives (paragraph, the
    next paragraph) pairs, paragraphs separated by blank lines. The corpus's other pairs in a batch
    are the negatives."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows: list[tuple] = []
    if path.suffix.lower() == ".jsonl":
        for number, record in _records(path)[1]:
            title, text = str(record.get("title") or "").strip(), str(record.get("text") or "").strip()
            if title and len(text) >= min_chars:
                rows.append((title, text))
    else:
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
        paragraphs = [p for p in paragraphs if len(p) >= min_chars]
        rows = list(zip(paragraphs, paragraphs[1:]))
    if len(rows) < 2:
        raise DataError(f"{path}: fewer than 2 training pairs could be made (a corpus.jsonl needs titles; a text file, paragraphs split by blank lines)")
    return TrainingData("pairs", rows, f"pairs from {path}")
