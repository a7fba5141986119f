"""Late chunking (Günther et al. 2024) for causal LMs: read a whole document once, then pool each
chunk's tokens, so every chunk vector carries the document's context.

On a causal model a token has read only what came before it, so plain late chunking gives the
first chunk no context at all. Under echo the second copy follows the whole document, so every
token of every chunk there has read all of it. By default a chunk pools its tokens from every copy
of the document: under echo the first copy's states (which have read the document up to that
point, so they stay close to the chunk's own words) and the second copy's (which have read all of
it). On SciFact that mix retrieves better than the second copy alone, whose chunk vectors lean
towards the whole document's (the README has the numbers); ``copies="pooled"`` pools the second
copy only. Any mean-pooling strategy works: ``mean`` has one copy, which is plain causal late
chunking.

How text maps to tokens:

- The document is tokenized once, as a whole, exactly as :meth:`Engine.prepare` tokenizes it;
  the tokenizer's offsets give each token's character span.
- A token belongs to the chunk in which its first character lies, so a span boundary inside a
  token gives the whole token to the chunk where it starts. A span in which no token starts (a
  few characters inside one long token) pools the token that covers it.
- Template tokens (the prompt, the first copy under echo) are read but never pooled.
- Without spans, chunks of about ``chunk_tokens`` tokens end at a sentence end where one lies
  in their second half; chunks cover the document exactly and in order (a chunk starts where
  its first token starts, so the whitespace between two chunks ends the earlier one).
- A document longer than a window (``max_seq_length`` holds the prompt with every copy) is read
  in macro windows that overlap by ``window_overlap`` tokens. Each window is echoed on its own;
  a token is pooled from the window in which it lies farthest from an edge (the overlap is split
  at its middle), so overlapping tokens serve as context only once pooled. A chunk that crosses
  windows is the token-weighted mean of its parts.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from itertools import pairwise
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .engine.batching import Batch, Prepared, Row
from .engine.engine import Engine
from .engine.inputs import check_texts, chunked
from .engine.settings import DEFAULT_BATCH_SIZE

Chunking = Literal["late", "naive"]
CHUNKINGS = ("late", "naive")
Copies = Literal["all", "pooled"]
COPIES = ("all", "pooled")
DEFAULT_CHUNK_TOKENS = 256
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n\s*")


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document: ``document[start:end] == text``, and its vector."""

    text: str
    start: int
    end: int
    embedding: np.ndarray


@dataclass(frozen=True)
class DocumentTokens:
    """A document tokenized as a whole: ids and each token's ``(start, end)`` character span."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]

    @property
    def starts(self) -> list[int]:
        return [a for a, _ in self.offsets]


def tokenize_documents(engine: Engine, documents: Sequence[str], task: str | None = "document") -> list[DocumentTokens]:
    """Each document tokenized once, with the lead its template gives the input."""
    leads = {lay.lead for lay in engine.layouts(task)}
    if len(leads) > 1:
        raise ValueError("Late chunking needs one tokenization per document; this strategy's templates tokenize the input differently")
    lead = leads.pop()
    out = []
    for i, text in enumerate(documents):
        ids, offsets = engine.pieces.encode_with_offsets(text, lead)
        if not ids:
            raise ValueError(f"Document {i} is empty; every document needs text to chunk")
        out.append(DocumentTokens(text, ids, offsets))
    return out


# ---------------------------------------------------------------------------- spans


def split_by_tokens(doc: DocumentTokens, chunk_tokens: int) -> list[tuple[int, int]]:
    """Character spans of about ``chunk_tokens`` tokens that cover ``doc.text`` exactly, in order.
    A chunk ends at the last sentence end in its second half, if there is one."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive int, got {chunk_tokens!r}")
    starts = doc.starts
    sentence_starts = sorted(set(_sentence_starts(doc)))
    cuts = [0]
    while cuts[-1] + chunk_tokens < len(starts):
        limit = cuts[-1] + chunk_tokens
        at = bisect_right(sentence_starts, limit) - 1
        best = sentence_starts[at] if at >= 0 else 0
        cuts.append(best if best > cuts[-1] + chunk_tokens // 2 else limit)
    chars = [0, *(starts[c] for c in cuts[1:]), len(doc.text)]
    return [(a, b) for a, b in pairwise(chars) if b > a]


def _sentence_starts(doc: DocumentTokens) -> Iterator[int]:
    """Tokens that begin a sentence: the token holding the first character after a sentence end,
    when only whitespace of that token comes before it."""
    starts = doc.starts
    for match in _SENTENCE_END.finditer(doc.text):
        i = bisect_right(starts, match.end()) - 1
        if i > 0 and not doc.text[starts[i] : match.end()].strip():
            yield i


def check_spans(spans: object, length: int, index: int) -> list[tuple[int, int]]:
    """Spans as ``(start, end)`` character offsets, in order, within the document, not overlapping."""
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Iterable):
        raise TypeError(f"chunk_spans[{index}] must be a list of (start, end) pairs, got {type(spans).__name__}")
    out: list[tuple[int, int]] = []
    for k, span in enumerate(spans):
        if not (isinstance(span, Sequence) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
            raise TypeError(f"chunk_spans[{index}][{k}] must be a (start, end) pair of ints, got {span!r}")
        start, end = span
        if not 0 <= start < end <= length:
            raise ValueError(f"chunk_spans[{index}][{k}] = {tuple(span)} is outside document {index} (need 0 <= start < end <= {length})")
        if out and start < out[-1][1]:
            raise ValueError(
                f"chunk_spans[{index}][{k}] = {tuple(span)} overlaps or precedes the span before it {out[-1]}; "
                "spans must be in document order and must not overlap"
            )
        out.append((start, end))
    if not out:
        raise ValueError(f"chunk_spans[{index}] is empty; give document {index} at least one span")
    return out


def spans_to_tokens(doc: DocumentTokens, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each character span as a token range ``[first, stop)``: the tokens that start inside it,
    or, if none does, the token that covers its start."""
    starts = doc.starts
    ranges = []
    for start, end in spans:
        first, stop = bisect_left(starts, start), bisect_left(starts, end)
        if first == stop:
            covering = max(bisect_right(starts, start) - 1, 0)
            first, stop = covering, covering + 1
        ranges.append((first, stop))
    return ranges


# ---------------------------------------------------------------------------- windows


def windows(length: int, width: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, own_start, own_stop)`` of each macro window over ``length`` tokens: windows
    of ``width`` tokens overlapping by ``overlap``; each token is owned by exactly one window."""
    if length <= width:
        return [(0, length, 0, length)]
    if not 0 <= overlap < width:
        raise ValueError(f"window_overlap must be at least 0 and below the window of {width} tokens, got {overlap}")
    # The last start is the first one whose window reaches the end.
    spans = [(s, min(s + width, length)) for s in range(0, length - overlap, width - overlap)]
    # Split each overlap at its middle: a token is pooled where it has more context on both sides.
    cuts = [0, *((nxt + stop) // 2 for (_, stop), (nxt, _) in pairwise(spans)), length]
    return [(s, e, cuts[i], cuts[i + 1]) for i, (s, e) in enumerate(spans)]


def window_width(engine: Engine, task: str | None) -> int:
    """Document tokens per window: what fits ``max_seq_length`` with the template and every copy."""
    width = min((engine.max_seq_length - lay.fixed_length) // lay.template.copies for lay in engine.layouts(task))
    if width < 1:
        raise ValueError(f"The template leaves no room for the text within max_seq_length={engine.max_seq_length}")
    return width


# ---------------------------------------------------------------------------- late pooling


def late_chunk_vectors(
    engine: Engine,
    docs: Sequence[DocumentTokens],
    token_ranges: Sequence[Sequence[tuple[int, int]]],
    *,
    task: str | None = "document",
    window_overlap: int | None = None,
    copies: Copies = "all",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: tqdm | None = None,
) -> list[torch.Tensor]:
    """``[chunks, dim]`` per document: the mean hidden state of each token range (ranges may
    overlap here) over every copy of the document (``copies="all"``) or over the template's pooled
    copy only (``"pooled"``), read in its document's context, through the engine's batching and forward."""
    if copies not in COPIES:
        raise ValueError(f"copies must be 'all' or 'pooled', got {copies!r}")
    layouts = engine.layouts(task)
    if any(lay.template.pooling != "mean" for lay in layouts):
        raise ValueError(f"Late chunking pools token spans; strategy {engine.strategy!r} pools the last token. Use a mean-pooling strategy (echo, mean)")
    if engine.plan.token_prepending:
        raise ValueError("Late chunking does not combine with token prepending")
    width = window_width(engine, task)
    overlap = min(256, width // 4) if window_overlap is None else window_overlap
    constants = [len(lay.constant_prefix) for lay in layouts]
    items: list[Prepared] = []
    parts: list[list[tuple[int, int, int]]] = []  # per window: (document, chunk, tokens) of each local span
    first_chunk = [0]
    for d, (doc, ranges) in enumerate(zip(docs, token_ranges)):
        for start, stop, own_start, own_stop in windows(len(doc.ids), width, overlap):
            positions: list[int] = []
            segments: list[int] = []
            local: list[tuple[int, int, int]] = []
            for c, (a, b) in enumerate(ranges):
                lo, hi = max(a, own_start), min(b, own_stop)
                if lo < hi:
                    positions.extend(range(lo - start, hi - start))
                    segments.extend([len(local)] * (hi - lo))
                    local.append((d, c, hi - lo))
            if not local:
                continue  # a window whose own tokens fall between spans
            rows = []
            for lay, constant in zip(layouts, constants):
                ids, _, placeholder = lay.build(doc.ids[start:stop])
                starts = lay.copies(stop - start) if copies == "all" else [lay.pooled_copy(stop - start)]
                rows.append(Row(ids, [c + p for c in starts for p in positions], placeholder, constant, segments * len(starts)))
            items.append(tuple(rows))
            parts.append(local)
        first_chunk.append(first_chunk[-1] + len(ranges))
    most = max((len(p) for p in parts), default=1)

    def forward(batch: Batch) -> torch.Tensor:
        pooled = engine.forward(batch).float().cpu()  # [windows, spans in the batch, dim]
        return torch.nn.functional.pad(pooled, (0, 0, 0, most - pooled.shape[1]))

    with torch.inference_mode():
        pooled = engine.embed_prepared(items, forward, pooling="mean", batch_size=batch_size, progress=progress)
    # Each window's part of a chunk, weighted by its tokens: a chunk read in one window is that
    # window's mean; one that crosses windows is the token-weighted mean of its parts.
    index = torch.tensor([first_chunk[d] + c for local in parts for d, c, _ in local])
    weight = torch.tensor([float(n) for local in parts for _, _, n in local]).unsqueeze(1)
    parts_pooled = torch.cat([pooled[w, : len(local)] for w, local in enumerate(parts)])
    sums = torch.zeros(first_chunk[-1], pooled.shape[-1]).index_add_(0, index, parts_pooled * weight)
    vectors = sums / torch.zeros(first_chunk[-1], 1).index_add_(0, index, weight)
    return [vectors[first_chunk[d] : first_chunk[d + 1]] for d in range(len(docs))]


# ---------------------------------------------------------------------------- from spans to chunks


def resolve_spans(
    docs: Sequence[DocumentTokens], chunk_spans: Iterable[Sequence[tuple[int, int]]] | None, chunk_tokens: int
) -> list[list[tuple[int, int]]]:
    """The user's spans, checked, or token-split spans when there are none."""
    if chunk_spans is None:
        return [split_by_tokens(doc, chunk_tokens) for doc in docs]
    chunk_spans = list(chunk_spans)
    if len(chunk_spans) != len(docs):
        raise ValueError(f"chunk_spans has {len(chunk_spans)} entries for {len(docs)} documents; give one list of spans per document")
    return [check_spans(s, len(doc.text), i) for i, (s, doc) in enumerate(zip(chunk_spans, docs))]


def as_chunks(docs: Sequence[DocumentTokens], spans: Sequence[Sequence[tuple[int, int]]], vectors: torch.Tensor) -> list[list[Chunk]]:
    """``vectors`` (one row per span, documents in order) as each document's :class:`Chunk` list."""
    array = vectors.float().numpy()
    out, k = [], 0
    for doc, doc_spans in zip(docs, spans):
        out.append([Chunk(doc.text[a:b], a, b, array[k + i]) for i, (a, b) in enumerate(doc_spans)])
        k += len(doc_spans)
    return out


@torch.inference_mode()
def after_first_module(model: Any, vectors: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Run pooled vectors through the modules after the echo module (Dense, Normalize, a
    whitening, ...), as every other encode does."""
    rest = list(model)[1:]
    if not rest:
        return vectors
    device = model[0].engine.device
    out = []
    for start in range(0, len(vectors), batch):
        features: dict[str, Any] = {"sentence_embedding": vectors[start : start + batch].to(device)}
        for module in rest:
            features = module(features)
        out.append(features["sentence_embedding"].float().cpu())
    return torch.cat(out) if out else vectors


# ---------------------------------------------------------------------------- the whole run


def encode_chunks(
    model: Any,
    documents: Sequence[str],
    chunk_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    chunking: Chunking = "late",
    task: str | None = "document",
    window_overlap: int | None = None,
    copies: Copies = "all",
    batch_size: int = DEFAULT_BATCH_SIZE,
    normalize_embeddings: bool = False,
    show_progress_bar: bool = False,
) -> list[list[Chunk]]:
    """Split documents into chunks and embed each chunk with ``model`` (an echo
    ``SentenceTransformer``, as :meth:`EchoSentenceTransformer.encode_chunks` calls it); with
    ``chunking="late"`` (the default) every chunk vector is pooled from the whole document's forward.

    Args:
        documents: the texts to chunk; none may be empty.
        chunk_spans: per document, ``(start, end)`` character spans from any splitter, in
            order and not overlapping (gaps are read as context but not pooled). None splits
            by tokens.
        chunk_tokens: chunk size when splitting by tokens (a chunk ends at a sentence end in
            its second half, if there is one).
        chunking: ``"late"`` pools each chunk's tokens from the document's forward (needs a
            mean-pooling strategy: echo pools the second copy, ``mean`` its single copy);
            ``"naive"`` embeds each chunk's text alone, for comparison.
        task: which template reads the document (default ``"document"``).
        window_overlap: tokens shared by consecutive windows for documents longer than a
            window (``max_seq_length`` with the template and every copy); default
            ``min(256, window // 4)``.
        copies: late chunking pools a chunk's tokens from ``"all"`` copies of the document
            (echo: the first copy, read up to the chunk, and the second, read in full) or from
            the template's ``"pooled"`` copy only (echo: the second).
        batch_size: most texts (windows) per forward; the token budget usually decides.
        normalize_embeddings: unit-length chunk vectors.
        show_progress_bar: show a progress bar.

    Returns:
        For each document, its :class:`~echo_embeddings.late_chunking.Chunk` list: ``text``,
        ``start``/``end`` character offsets (``document[start:end] == text``) and
        ``embedding`` (a float32 array, after every module of the model).
    """
    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be 'late' or 'naive', got {chunking!r}")
    model.eval()
    engine = model[0].engine
    docs = tokenize_documents(engine, check_texts(documents), task)
    spans = resolve_spans(docs, chunk_spans, chunk_tokens)
    if chunking == "naive":
        texts = [doc.text[a:b].strip() or doc.text[a:b] for doc, doc_spans in zip(docs, spans) for a, b in doc_spans]
        options = {"task": task, "batch_size": batch_size, "normalize_embeddings": normalize_embeddings, "show_progress_bar": show_progress_bar}
        return as_chunks(docs, spans, model.encode(texts, convert_to_tensor=True, **options).cpu())
    with tqdm(desc="Late chunking", disable=not show_progress_bar, unit="window") as bar:
        ranges = [spans_to_tokens(doc, doc_spans) for doc, doc_spans in zip(docs, spans)]
        pooled = late_chunk_vectors(engine, docs, ranges, task=task, window_overlap=window_overlap, copies=copies, batch_size=batch_size, progress=bar)
    vectors = after_first_module(model, torch.cat(pooled))
    if normalize_embeddings:
        vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
    return as_chunks(docs, spans, vectors)


def token_embeddings(
    model: Any, texts: Sequence[str], *, task: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, show_progress_bar: bool = False
) -> list[torch.Tensor]:
    """Each text's per-token hidden states ``[tokens, dim]`` (float32, before any later module):
    what ``encode(..., output_value="token_embeddings")`` returns, and what chunkers such as
    Chonkie's ``LateChunker`` average over a chunk's tokens.

    One row per token of the text itself, tokenized as the template reads it (no special tokens,
    no template tokens): with echo, the states of the second copy, each of which has read the whole
    text; with ``mean``, the states of the single copy. A text longer than a window is read in
    overlapping windows as :func:`encode_chunks` does, and an empty text gives ``[0, dim]``. The
    mean of a span of these rows is the ``copies="pooled"`` late-chunked vector of that span.
    Last-token strategies have no pooled copy to return and raise ``ValueError``.
    """
    engine = model[0].engine
    texts = check_texts(texts)
    kept = [i for i, text in enumerate(texts) if text]
    docs = tokenize_documents(engine, [texts[i] for i in kept], task)
    ranges = [[(j, j + 1) for j in range(len(doc.ids))] for doc in docs]
    out = [torch.empty((0, engine.hidden_size)) for _ in texts]
    with tqdm(desc="Token embeddings", disable=not show_progress_bar, unit="window") as bar:
        pooled = late_chunk_vectors(engine, docs, ranges, task=task, copies="pooled", batch_size=batch_size, progress=bar)
    for i, vectors in zip(kept, pooled):
        out[i] = vectors
    return out


def stream_chunks(
    model: Any,
    documents: Iterable[str],
    chunk_spans: Iterable[Sequence[tuple[int, int]]] | None = None,
    *,
    documents_per_call: int = 256,
    **options: Any,
) -> Iterator[list[Chunk]]:
    """:func:`encode_chunks` over an iterable of any length, read lazily: yields each document's
    chunks in input order, ``documents_per_call`` documents at a time."""
    span_iter = iter(chunk_spans) if chunk_spans is not None else None
    for group in chunked(documents, documents_per_call):
        spans = None
        if span_iter is not None:
            spans = [next(span_iter, None) for _ in group]
            if any(s is None for s in spans):
                raise ValueError("chunk_spans ran out before the documents did; give one list of spans per document")
        yield from encode_chunks(model, group, spans, **options)
