"""What callers hand the engine: lists of texts, checked before any model work, and the one task
vocabulary every surface shares (the CLI, Ray, the adapters, MTEB's prompt names)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from itertools import islice
from typing import Literal

Task = Literal["query", "document"]
TASK_NAMES: dict[str | None, Task | None] = {
    None: None,
    "sentence": None,
    "query": "query",
    "document": "document",
    "passage": "document",
    "corpus": "document",
}
"""Every accepted spelling and the template it selects: ``None`` (or ``"sentence"``) the symmetric
template, ``"query"`` the query template, ``"document"`` (``"passage"``, ``"corpus"``: MTEB's
prompt names) the document template."""


def normalize_task(task: str | None) -> Task | None:
    """``"query"``, ``"document"`` or None for any accepted spelling; an unknown one is an error."""
    try:
        return TASK_NAMES[task]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown task {task!r}; expected one of {[t for t in TASK_NAMES if t]} or None") from None


def check_texts(texts: object, first_index: int = 0) -> list[str]:
    """Fail before any model work if an item is not a string, naming its index and type."""
    if isinstance(texts, str):
        raise TypeError("Expected a list of strings, got a single str; wrap it in a list")
    if texts is None:
        raise TypeError("Expected a list of strings, got None")
    texts = list(texts)  # type: ignore[call-overload]
    for i, text in enumerate(texts, first_index):
        if not isinstance(text, str):
            raise TypeError(f"Input {i} is {type(text).__name__} ({text!r:.60}); every input must be a str")
    return texts


def chunked(texts: Iterable[str], chunk_size: int) -> Iterator[list[str]]:
    """Checked lists of up to ``chunk_size`` texts, read lazily from any iterable."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if isinstance(texts, str):
        raise TypeError("Expected an iterable of strings, got a single str; wrap it in a list")
    items = iter(texts)
    done = 0
    while chunk := check_texts(islice(items, chunk_size), first_index=done):
        yield chunk
        done += len(chunk)


def known_length(texts: Iterable[str]) -> int | None:
    return len(texts) if isinstance(texts, Sized) else None
