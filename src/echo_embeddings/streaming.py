"""Corpora of any size: encode an iterable lazily (:func:`stream`), and write the stream of
embedding chunks to a ``.npy`` file without holding them in memory (:func:`save_npy`).

The file is a standard NumPy array: ``numpy.load(path, mmap_mode="r")`` opens it as a memmap.
The row count is unknown until the stream ends, so the header is written with room to spare
and rewritten, same size, at the end.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .engine.inputs import chunked, known_length

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_BYTES = 128  # magic + length + dict, a multiple of 64 as the format asks


def _header(rows: int, dim: int, descr: str = "<f4") -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    room = _HEADER_BYTES - len(_MAGIC) - 2 - len(text) - 1
    if room < 0:
        raise ValueError(f"shape ({rows}, {dim}) does not fit the .npy header")
    body = (text + " " * room + "\n").encode("latin1")
    return _MAGIC + struct.pack("<H", len(body)) + body


def save_npy(chunks: Iterable[torch.Tensor | np.ndarray], path: str | os.PathLike) -> tuple[int, int]:
    """Append each ``[n, dim]`` chunk to ``path``; returns the final shape. Rows are float32, or
    int8 / uint8 when the first chunk is (quantized embeddings, ``precision=`` in ``encode``)."""
    path = Path(path)
    rows, dim, dtype = 0, None, None
    with path.open("wb") as f:
        f.write(_header(0, 0))
        for chunk in chunks:
            array = chunk.float().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
            if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
                raise ValueError(f"Chunk of shape {array.shape} after {rows} rows; expected [n, {dim or 'dim'}]")
            if dtype is None:
                dtype = array.dtype if array.dtype in (np.int8, np.uint8) else np.dtype("<f4")
            elif array.dtype != dtype and dtype != np.dtype("<f4"):
                raise ValueError(f"Chunk of {array.dtype} after {rows} rows of {dtype}")
            dim = array.shape[1]
            f.write(np.ascontiguousarray(array, dtype=dtype).tobytes())
            rows += array.shape[0]
        f.seek(0)
        f.write(_header(rows, dim or 0, (dtype or np.dtype("<f4")).str))
    return rows, dim or 0


def stream(model: Any, texts: Iterable[str], *, chunk_size: int = 4096, show_progress_bar: bool = False, **encode_options: Any) -> Iterator[np.ndarray]:
    """``model.encode`` over an iterable of any length, ``chunk_size`` texts at a time, yielding
    arrays in input order; the input is read lazily, so memory stays bounded."""
    encode_options.setdefault("convert_to_numpy", True)
    with tqdm(total=known_length(texts), desc="Embedding", disable=not show_progress_bar, unit="text") as bar:
        for chunk in chunked(texts, chunk_size):
            yield model.encode(chunk, show_progress_bar=False, **encode_options)
            bar.update(len(chunk))
