"""An on-disk embedding cache for evaluation runs: vectors keyed by (configuration, text) in SQLite,
so re-runs and new metrics cost nothing."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .tasks import Encode, EncodeChunks


class EmbeddingCache:
    """Vectors on disk keyed by (configuration, text), so re-runs and new metrics cost nothing."""

    def __init__(self, path: str | Path, config: dict) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (config TEXT, text TEXT, vector BLOB, PRIMARY KEY (config, text))")
        self.config = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()

    def _cached(self, tag: str, texts: list[str], compute: Callable[[list[str]], Sequence[np.ndarray]]) -> list[np.ndarray]:
        """Arrays for ``texts`` under ``tag``: read from disk, and the missing ones computed (in
        text order, each distinct text once) and stored. Vectors are stored as raw float32
        bytes; chunk matrices (tag ``chunks``) in ``.npy`` format, which keeps their shape."""
        matrix = tag == "chunks"
        keys = [hashlib.sha256(f"{tag}\0{t}".encode()).hexdigest() for t in texts]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT text, vector FROM vectors WHERE config = ? AND text IN ({marks})", [self.config, *chunk])
            found.update((k, _decode(v, matrix)) for k, v in rows)
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items())
        if missing:
            arrays = [np.asarray(a, dtype=np.float32) for a in compute([t for _, t in missing])]
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", [(self.config, k, _encode(a, matrix)) for (k, _), a in zip(missing, arrays)])
            self.db.commit()
            found.update((k, a) for (k, _), a in zip(missing, arrays))
        return [found[k] for k in keys]

    def wrap(self, encode: Encode) -> Encode:
        def cached(texts: list[str], task: str | None) -> np.ndarray:
            return np.stack(self._cached(str(task), texts, lambda missing: encode(missing, task)))

        return cached

    def wrap_chunks(self, encode_chunks: EncodeChunks) -> EncodeChunks:
        """The same for chunk vectors: one ``[chunks, dim]`` array per document."""

        def cached(documents: list[str]) -> list[np.ndarray]:
            return self._cached("chunks", documents, encode_chunks)

        return cached


def _encode(array: np.ndarray, matrix: bool) -> bytes:
    if not matrix:
        return array.tobytes()
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _decode(blob: bytes, matrix: bool) -> np.ndarray:
    return np.load(io.BytesIO(blob)) if matrix else np.frombuffer(blob, dtype=np.float32)
