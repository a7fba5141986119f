"""Scale-out on Ray Data: embed corpora larger than one machine, with the same vectors.

(Named ``scale_out`` so that it never reads as, or shadows, the ``ray`` package itself.)

Install with ``pip install "echo-embeddings[ray]"``. :class:`EchoEmbedBatches` is a callable class
for ``Dataset.map_batches``: each actor loads the model once, and every Ray batch goes through
the model's ``encode`` (token-count sorting, the token budget, the whole module list), so a row's
vector is exactly the one a single process computes::

    import ray
    from echo_embeddings.scale_out import EchoEmbedBatches

    ds = ray.data.read_parquet("s3://bucket/corpus/")            # any dataset with a text column
    ds = ds.map_batches(
        EchoEmbedBatches,
        fn_constructor_kwargs={"model": "smollm2-135m", "strategy": "echo", "task": "document"},
        compute=ray.data.ActorPoolStrategy(size=4),               # one actor per GPU on a cluster
        batch_size=1024,
        num_gpus=1,
    )
    ds.write_parquet("s3://bucket/vectors/")

:func:`read_corpus` reads text, JSONL, CSV/TSV and Parquet files or folders inside Ray tasks and
gives every row an ``id`` (the file and row number, or a column of the data), so the output can
be joined back to the input whatever order Ray finishes in. :func:`embed_corpus` is what
``echo-embeddings embed --ray`` runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .api import load
from .data import table_records
from .engine.aliases import DEFAULT_MODEL
from .engine.inputs import normalize_task
from .engine.settings import DEFAULT_BATCH_SIZE
from .output_format import OutputFormat

SUFFIXES = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
READ_CPUS = 0
"""CPUs reserved per file-reading task: none, so reading never waits for the cores the embedding
actors hold (it is mostly I/O), and the differing reservation keeps Ray from fusing the two stages."""
MIN_SPLIT_BYTES = 64 << 10
"""A text or JSONL file is cut into ranges of at least this many bytes: an actor gets whole reading
tasks' output, so even a small file needs a few ranges to feed several actors."""
DEFAULT_RAY_BATCH = 1024
"""Rows per Ray batch: large enough that the model's own length sorting has room to work."""


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError('The Ray path needs Ray Data: pip install "echo-embeddings[ray]"') from None
    return ray


class BadRowError(ValueError):
    """A row that cannot be embedded; the message names its id and what was expected."""


class EchoEmbedBatches:
    """A callable class for ``Dataset.map_batches``: the model is loaded once per actor.

    Args:
        model: alias, Hugging Face id, folder, ``.gguf`` file or saved echo model (a fine-tuned
            one included; it keeps its own strategy and module list).
        strategy: preset or template string; None keeps a saved model's own, else ``echo``.
        task: ``"query"``, ``"document"`` or None (symmetric) — which template embeds the rows.
        text_column: the batch column holding the texts.
        id_column: the column of row ids; a batch without it is fine, errors then name the row's
            position in the batch.
        embedding_column: the column the vectors are written to.
        normalize: unit-length vectors.
        truncate_dim: keep the first N dimensions (before normalising; quality holds only for a
            PCA-whitened or Matryoshka-trained model).
        precision: ``float32``, ``int8``, ``uint8``, ``binary`` or ``ubinary``
            (:class:`~echo_embeddings.output_format.OutputFormat`).
        precision_ranges: for int8 / uint8, each dimension's ``[minimums, maximums]``, the same
            in every actor (a batch must not calibrate its own scale).
        batch_size: most texts per forward inside the actor; the token budget usually decides.
        device: where to load the model.
        **options: :class:`~echo_embeddings.EchoEmbedder` settings (``output_layer``,
            ``max_seq_length``, ``max_batch_tokens``, ...).

    ``__call__`` takes a batch (a dict of numpy arrays, Ray's ``numpy`` batch format) and returns
    it with ``embedding_column`` added: ``[rows, dim]`` in ``precision``, one row per input row.
    """

    def __init__(
        self,
        model: str | None = None,
        strategy: str | None = None,
        *,
        task: str | None = None,
        text_column: str = "text",
        id_column: str = "id",
        embedding_column: str = "embedding",
        normalize: bool = False,
        truncate_dim: int | None = None,
        precision: str = "float32",
        precision_ranges: Any = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | None = None,
        **options: Any,
    ) -> None:
        task = normalize_task(task)
        self.output = OutputFormat(truncate_dim, normalize, precision, precision_ranges)  # checked before the weights load
        self.model = load(model or DEFAULT_MODEL, strategy, device=device, **options)
        self.task, self.text_column, self.id_column, self.embedding_column = task, text_column, id_column, embedding_column
        self.batch_size = batch_size

    def texts(self, batch: dict[str, np.ndarray]) -> list[str]:
        """The batch's texts, checked: a missing column or a non-string value names the row id."""
        if self.text_column not in batch:
            ids = batch.get(self.id_column)
            first = f" (first row id {ids[0]!r})" if ids is not None and len(ids) else ""
            raise BadRowError(f"The batch has no {self.text_column!r} column{first}; its columns are {sorted(batch)}")
        texts = batch[self.text_column]
        ids = batch.get(self.id_column)
        out = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                where = f"row id {ids[i]!r}" if ids is not None else f"row {i} of the batch"
                raise BadRowError(f"{where}: {self.text_column!r} is {type(text).__name__} ({text!r:.60}); every text must be a str")
            out.append(text)
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = self.texts(batch)
        options = {"task": self.task} if self.task else {}
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, **options)
        return {**batch, self.embedding_column: self.output.apply(np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1))}


# -- reading files inside Ray tasks ----------------------------------------------------------


def corpus_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named, and the corpus files below folders named (by suffix), in a stable order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path} holds no {'/'.join(SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise ValueError(f"{path}: unknown file type; expected one of {', '.join(SUFFIXES)}")
            files.append(path)
        else:
            raise FileNotFoundError(f"No such file or folder: {path}")
    return files


def _splits(path: Path, pieces: int) -> list[dict[str, Any]]:
    """Line-aligned byte ranges of a text or JSONL file (about ``pieces`` of them), each with the
    line number it starts at; CSV/TSV (quoted fields may hold newlines) and Parquet stay whole.
    Only the driver's newline count at the boundaries reads the file here."""
    kind = SUFFIXES[path.suffix.lower()]
    size = path.stat().st_size
    if kind not in ("text", "jsonl") or pieces <= 1 or size < 2 * MIN_SPLIT_BYTES:
        return [{"path": str(path.resolve()), "start": 0, "end": -1, "line": 1}]
    step = max(MIN_SPLIT_BYTES, -(-size // pieces))
    splits, start, line = [], 0, 1
    with path.open("rb") as f:
        while start < size:
            f.seek(min(start + step, size))
            f.readline()  # a line belongs to the range its first byte is in
            end = min(f.tell(), size)
            splits.append({"path": str(path.resolve()), "start": start, "end": end, "line": line})
            f.seek(start)
            line += f.read(end - start).count(b"\n")
            start = end
    return splits


def _rows(split: dict[str, Any], text_column: str, id_column: str | None) -> Iterator[tuple[str, Any]]:
    """``(id, text)`` for every row of one split; ids are ``file:row`` (the line number for text and
    JSONL, the data row for CSV/TSV, the row for Parquet) unless ``id_column`` is given."""
    path = Path(split["path"])
    kind = SUFFIXES[path.suffix.lower()]
    name = path.name

    def identify(number: int, row: dict[str, Any]) -> str:
        if id_column is None:
            return f"{name}:{number}"
        if id_column not in row:
            raise BadRowError(f"{name}:{number} has no {id_column!r} column; its columns are {sorted(row)}")
        return str(row[id_column])

    def text_of(number: int, row: dict[str, Any]) -> Any:
        if text_column not in row:
            raise BadRowError(f"row id {identify(number, row)!r} ({name}:{number}) has no {text_column!r} field; it has {sorted(row)}")
        return row[text_column]

    if kind in ("text", "jsonl"):
        with path.open("rb") as f:
            f.seek(split["start"])
            end = split["end"] if split["end"] >= 0 else float("inf")
            number = split["line"]
            while f.tell() < end and (raw := f.readline()):
                line = raw.decode("utf-8").rstrip("\r\n")
                if kind == "text":
                    yield f"{name}:{number}", line
                elif line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise BadRowError(f"{name}:{number} is not a JSON object")
                    yield identify(number, row), text_of(number, row)
                number += 1
    elif kind in ("csv", "tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            for number, row in enumerate(table_records(f, path.name), 1):
                yield identify(number, row), text_of(number, row)
    else:
        import pyarrow.parquet as pq

        number = 0
        for record_batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in record_batch.to_pylist():
                number += 1
                yield identify(number, row), text_of(number, row)


def _read_files(batch: dict[str, np.ndarray], text_column: str, id_column: str | None, rows_per_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """A Ray task: file splits into batches of ``{id, text}`` rows, streamed."""
    ids: list[str] = []
    texts: list[Any] = []
    for split in batch["split"]:
        for row_id, text in _rows(split, text_column, id_column):
            ids.append(row_id)
            texts.append(text)
            if len(ids) == rows_per_batch:
                yield {"id": np.array(ids, dtype=object), "text": np.array(texts, dtype=object)}
                ids, texts = [], []
    if ids:
        yield {"id": np.array(ids, dtype=object), "text": np.array(texts, dtype=object)}


def read_corpus(
    paths: Sequence[str | Path], *, text_column: str = "text", id_column: str | None = None, splits_per_file: int = 1, rows_per_batch: int = 4096
) -> Any:
    """A Ray ``Dataset`` of ``{id, text}`` rows from text (one text per line), JSONL, CSV/TSV and
    Parquet files or folders. Files are read inside Ray tasks, streamed; text and JSONL files of
    more than a few MiB are cut into about ``splits_per_file`` line-aligned ranges so that a single
    large file feeds every actor (an actor gets whole reading tasks' output)."""
    ray = require_ray()
    splits = [s for f in corpus_files(paths) for s in _splits(f, splits_per_file)]
    return ray.data.from_items([{"split": s} for s in splits], override_num_blocks=len(splits)).map_batches(
        _read_files, fn_kwargs={"text_column": text_column, "id_column": id_column, "rows_per_batch": rows_per_batch},
        batch_size=1, num_cpus=READ_CPUS,
    )


def embed_corpus(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    actors: int = 1,
    cpus_per_actor: float = 1,
    gpus_per_actor: float = 0,
    batch_size: int = DEFAULT_RAY_BATCH,
    text_column: str = "text",
    id_column: str | None = None,
    keep_text: bool = False,
    overwrite: bool = False,
    **embed_options: Any,
) -> int:
    """Read ``paths``, embed every row on ``actors`` Ray actors, write Parquet to ``out`` (columns
    ``id``, ``embedding`` and, with ``keep_text``, ``text``). Returns the number of rows written.

    ``out`` (a local folder or a URI pyarrow's file systems know) must not hold anything yet, so
    that two runs never mix in one folder; ``overwrite=True`` replaces what it holds.

    Ray sets each actor's thread count (``OMP_NUM_THREADS``) to its CPU reservation, so on CPUs
    ``cpus_per_actor`` is also the number of threads torch uses in each actor."""
    ray = require_ray()
    if actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    if not overwrite:
        _refuse_used_output(str(out))
    ds = read_corpus(paths, text_column=text_column, id_column=id_column, splits_per_file=4 * actors)
    ds = ds.map_batches(
        EchoEmbedBatches,
        fn_constructor_kwargs=embed_options,
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    if not keep_text:
        ds = ds.drop_columns(["text"])
    ds.write_parquet(str(out), mode=ray.data.SaveMode.OVERWRITE if overwrite else ray.data.SaveMode.APPEND)
    return _written_rows(str(out))


def _output_location(out: str) -> tuple[Any, str]:
    """``out`` as a pyarrow file system and a path on it (a local folder, or a URI such as s3://)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(out) if "://" in out else (fs.LocalFileSystem(), str(Path(out).absolute()))


def _written_rows(out: str) -> int:
    """Rows in the Parquet files under ``out``, from their footers (0 when nothing was written).
    Ray's own read_parquet is not used: in Ray 2.60 its file listing can raise InterruptedError
    in a worker thread after a successful read."""
    import pyarrow.dataset
    from pyarrow import fs

    filesystem, path = _output_location(out)
    if filesystem.get_file_info(path).type == fs.FileType.NotFound:
        return 0
    return pyarrow.dataset.dataset(path, filesystem=filesystem, format="parquet").count_rows()


def _refuse_used_output(out: str) -> None:
    from pyarrow import fs

    filesystem, path = _output_location(out)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        raise FileExistsError(f"--out {out} is a file; embed writes a folder of Parquet files")
    if info.type == fs.FileType.Directory and filesystem.get_file_info(fs.FileSelector(path, recursive=False)):
        raise FileExistsError(f"--out {out} already holds files; choose a new folder or pass overwrite=True (--overwrite) to replace them")
