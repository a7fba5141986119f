"""Training data for retrieval without labels: a causal LM writes queries for the passages of a
corpus (doc2query, InPars, Promptagator and GPL did this for other retrievers), a ranker (BM25 or
the zero-shot embedder) keeps the queries whose own passage it ranks near the top (round-trip
consistency), optionally with a mined hard negative for each, and the result trains like any
(query, passage) or (query, passage, negative) file.

- :func:`load_generator`: the causal LM that writes (the embedded model's own weights with their
  LM head, or another one).
- :func:`generate_queries`: batched decoding with the KV cache, greedy for one query a passage
  (deterministic) or sampled under a seed for several, each query stopping at a newline, and
  left out when it runs to ``max_new_tokens`` without one.
- :func:`round_trip`: the filter and the hard negatives.
- :func:`write_pairs`: the JSONL file of every generated query, kept or not, and why.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import DataError, Passage, TrainingData
from .bm25 import BM25
from .trainer import prompt_length

logger = logging.getLogger(__name__)

ASK = "{passage}\n\nWrite one short question that this passage answers."
"""The request for one passage (``{passage}``): a user turn for a chat model, after the examples."""

FEW_SHOT = (
    (
        (
            "Regular moderate exercise lowered resting blood pressure in adults with hypertension in a twelve-week "
            "trial, with the largest drops in participants who walked at least thirty minutes a day."
        ),
        "does walking every day lower blood pressure in people with hypertension",
    ),
    (
        (
            "The bridge was closed in 1998 after inspectors found corrosion in its steel cables; a replacement "
            "opened six years later a few hundred metres upstream."
        ),
        "corroded steel cables forced the old bridge to close",
    ),
)
"""Worked examples shown before each passage (chat turns, or plain text for a base model),
written for this package in two query forms (a question, a claim); no corpus's queries. Two, not
more: with four, SmolLM2 copied the last one's query for a third of SciFact's abstracts. A query
that still repeats one is dropped (see :func:`generate_queries`)."""

BASE_PROMPT = "{shots}Passage: {passage}\nQuery:"
SHOT = "Passage: {passage}\nQuery: {query}\n\n"


@dataclass
class GeneratedQuery:
    """One generated query and what the filter made of it (a row of the ``--pairs-out`` file)."""

    passage_id: str
    query: str
    rank: int | None = None
    """Where the zero-shot embedder ranks the query's own passage among the corpus (1 = first)."""
    kept: bool = False
    negative_id: str | None = None
    """The hard negative: the best-ranked other passage (None without hard negatives)."""


def load_generator(name_or_path: str, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> tuple[Any, Any]:
    """A causal LM with its LM head, and its tokenizer set up for batched generation (left
    padding): an alias, ``.gguf`` file, Hugging Face id or folder, as :func:`echo_embeddings.load`
    takes. The embedding model itself loads without the head, so this is a second copy of the
    weights, held only while queries are written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..engine.loading import default_device, resolve
    from ..engine.precision import resolve_dtype

    folder = resolve(name_or_path)
    device = torch.device(device) if device is not None else default_device()
    dtype, _ = resolve_dtype(dtype, device)
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    if info["missing_keys"]:  # e.g. an untied LM head that a bare-decoder folder does not hold: it would write noise
        raise ValueError(
            f"{name_or_path}: the checkpoint lacks {sorted(info['missing_keys'])[:3]} for generation; name a full causal LM as the generator"
        )
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def is_chat_model(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_for(tokenizer: Any, passage: str, ask: str = ASK) -> str:
    """The generation prompt for one passage: the :data:`FEW_SHOT` examples, then ``ask`` with the
    passage; as chat turns for a chat model, as plain text (``Passage: ... Query: ...``) else."""
    if is_chat_model(tokenizer):
        turns: list[dict[str, str]] = []
        for example, query in FEW_SHOT:
            turns += [{"role": "user", "content": ask.format(passage=example)}, {"role": "assistant", "content": query}]
        turns.append({"role": "user", "content": ask.format(passage=passage)})
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    shots = "".join(SHOT.format(passage=p, query=q) for p, q in FEW_SHOT)
    return BASE_PROMPT.format(shots=shots, passage=passage)


def clean_query(text: str) -> str:
    """The first line of a generation, without a leading ``Query:`` label, list marker or quotes."""
    line = text.strip().split("\n", 1)[0].strip()
    line = re.sub(r"^(search )?query\s*[:\-]\s*", "", line, flags=re.IGNORECASE)
    line = re.sub(r"^(\d+[.)]|[-*•])\s+", "", line)
    return line.strip().strip("\"“”'`").strip()


def newline_token_ids(tokenizer: Any) -> list[int]:
    """Every token whose text holds a newline: generation stops at any of them."""
    vocabulary = tokenizer.get_vocab()
    return sorted(i for i in vocabulary.values() if "\n" in tokenizer.decode([i]))


def shorten(tokenizer: Any, passages: Sequence[Passage], max_tokens: int) -> tuple[list[str], int]:
    """Passage texts (title first where there is one) cut to ``max_tokens`` tokens; how many were cut."""
    texts, cut = [], 0
    for passage in passages:
        text = passage.full_text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            text, cut = tokenizer.decode(ids[:max_tokens]), cut + 1
        texts.append(text)
    return texts, cut


def split_prompt(tokenizer: Any, ask: str = ASK) -> tuple[list[int], str]:
    """The token ids every prompt starts with (the examples, up to the passage) and the template
    of the rest, with ``{passage}``. The cut falls before the space that leads the passage, where
    the tokenizers split words anyway, so head + rest tokenize as the whole prompt does."""
    marker = "\x00PASSAGE\x00"
    whole = prompt_for(tokenizer, marker, ask)
    head, rest = whole.split(marker, 1)
    lead = len(head) - len(head.rstrip(" "))
    head, rest = head[: len(head) - lead], " " * lead + "{passage}" + rest.replace("{", "{{").replace("}", "}}")
    ids = tokenizer(head, add_special_tokens=not is_chat_model(tokenizer))["input_ids"]  # a chat template writes its own
    return ids, rest


@torch.inference_mode()
def _prefix_key_values(generator: Any, ids: list[int]) -> tuple[str, list[tuple[torch.Tensor, torch.Tensor]]] | None:
    """The shared head's keys and values, computed once; None where the model takes no cache."""
    from transformers import DynamicCache

    from ..engine.model_parts import cache_keyword, input_device

    keyword = cache_keyword(generator)
    if keyword is None or not ids:
        return None
    cache = DynamicCache(config=generator.config)
    generator(input_ids=torch.tensor([ids], device=input_device(generator)), **{keyword: cache}, use_cache=True)
    return keyword, [(layer.keys, layer.values) for layer in cache.layers]


@torch.inference_mode()
def generate_queries(
    generator: Any,
    tokenizer: Any,
    passages: Sequence[Passage],
    *,
    per_passage: int = 1,
    max_new_tokens: int = 32,
    max_passage_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    ask: str = ASK,
    prefix_cache: bool = True,
    drop_unfinished: bool = True,
    show_progress_bar: bool = True,
) -> list[list[str]]:
    """``per_passage`` queries for each passage, in passage order.

    - A query that comes out empty or repeats an example's query is left out (a passage may get
      fewer), and a passage longer than ``max_passage_tokens`` is cut for the prompt: each with a
      warning giving the count.
    - So is a query that runs to ``max_new_tokens`` without ending (``drop_unfinished``): it is
      cut mid-sentence, and most often the passage's own words carried on rather than a
      question, which the BM25 round trip would keep because it copies its passage.
    - Every prompt starts with the same examples: their keys and values are computed once and
      shared by every batch (``prefix_cache``), so only the passage and the query are run.
    - Batches hold prompts of similar length. One query a passage decodes greedily; several are
      sampled (temperature 0.8, top-p 0.95) under ``seed``, the caller's random state untouched.
    - ``ask`` is the request of a chat model's prompt (:func:`prompt_for`)."""
    from transformers import DynamicCache

    from ..engine.model_parts import input_device

    if per_passage < 1:
        raise ValueError(f"per_passage must be at least 1, got {per_passage}")
    texts, cut = shorten(tokenizer, passages, max_passage_tokens)
    if cut:
        logger.warning(
            "%d of %d passages were cut to %d tokens for the query prompt (max_passage_tokens)", cut, len(texts), max_passage_tokens
        )
    head, rest = split_prompt(tokenizer, ask)
    prefix = _prefix_key_values(generator, head) if prefix_cache else None
    tails = [tokenizer(rest.format(passage=text), add_special_tokens=False)["input_ids"] for text in texts]
    order = sorted(range(len(tails)), key=lambda i: -len(tails[i]))
    stops = [*newline_token_ids(tokenizer), *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])]
    sampling = {"do_sample": True, "temperature": 0.8, "top_p": 0.95} if per_passage > 1 else {"do_sample": False}
    device = input_device(generator)
    out: list[list[str]] = [[] for _ in tails]
    examples, dropped, unfinished = {q.lower() for _, q in FEW_SHOT}, 0, 0
    stop_ids = torch.tensor(stops, device=device)
    # Sampling draws from torch's global generator: seeded here, and the caller's state restored after.
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        tqdm(total=len(tails), desc="Writing queries", unit="passage", disable=not show_progress_bar) as bar,
    ):
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            rows = [i for i in order[start : start + batch_size] for _ in range(per_passage)]
            # Left padding of the passage part: [head][pads][passage + request]; positions follow the mask.
            width = max(len(tails[i]) for i in rows)
            ids = torch.full((len(rows), len(head) + width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            ids[:, : len(head)], mask[:, : len(head)] = torch.tensor(head), 1
            for r, i in enumerate(rows):
                ids[r, ids.shape[1] - len(tails[i]) :] = torch.tensor(tails[i])
                mask[r, ids.shape[1] - len(tails[i]) :] = 1
            cache = {}
            if prefix is not None:
                keyword, kv = prefix
                rows_kv = [(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v in kv]
                cache = {keyword: DynamicCache(ddp_cache_data=rows_kv, config=generator.config)}
            generated = generator.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                **cache,
                max_new_tokens=max_new_tokens,
                min_new_tokens=2,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                top_k=None,
                **sampling,
            )
            new_ids = generated[:, ids.shape[1] :]
            ended = torch.isin(new_ids, stop_ids).any(dim=1).tolist()  # a finished row holds its stop token (pads come after)
            for r, text in enumerate(tokenizer.batch_decode(new_ids, skip_special_tokens=True)):
                query = clean_query(text)
                if drop_unfinished and not ended[r]:
                    unfinished += 1
                elif query and query.lower() not in examples:
                    out[rows[r]].append(query)
                else:
                    dropped += 1
            bar.update(len(rows) // per_passage)
    if dropped:
        logger.warning(
            "%d of %d generated queries were empty or repeated an example's query, and were left out", dropped, len(tails) * per_passage
        )
    if unfinished:
        logger.warning(
            "%d of %d generated queries ran to max_new_tokens=%d without ending, and were left out (drop_unfinished=False keeps them)",
            unfinished,
            len(tails) * per_passage,
            max_new_tokens,
        )
    return out


Ranker = Literal["embedder", "bm25"]


def round_trip(
    model: Any,
    passages: Sequence[Passage],
    queries: Sequence[Sequence[str]],
    *,
    top_k: int = 3,
    hard_negatives: bool = False,
    ranker: Ranker = "bm25",
    max_seq_length: int | None = None,
    batch_size: int = 256,
    show_progress_bar: bool = True,
) -> list[GeneratedQuery]:
    """Every generated query with the rank its own passage gets among all passages; kept when that
    rank is at most ``top_k``. With ``hard_negatives``, a kept query's negative is the
    best-ranked passage other than its own. Ties count against the query: a query that shares no
    word with any passage under BM25 ranks last.

    - ``ranker``: ``"bm25"`` (the default) ranks with :class:`~echo_embeddings.training.bm25.BM25`
      over the passage texts, in seconds; ``"embedder"`` with ``model`` (cosine of query and
      document embeddings), a forward pass over the whole corpus (on a 2-core CPU about 1.3
      passages/s for SmolLM2 in fp32, longer than writing the queries).
    - ``max_seq_length``: the embedder's prompts cut as training will cut them, so it ranks what
      the model will learn from (BM25 reads whole passages)."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if ranker not in ("embedder", "bm25"):
        raise ValueError(f"ranker must be 'embedder' or 'bm25', got {ranker!r}")
    flat = [(i, q) for i, qs in enumerate(queries) for q in qs]
    if not flat:
        return []
    texts = [p.full_text for p in passages]
    asked = [q for _, q in flat]
    if ranker == "bm25":
        chunks = BM25(texts).scores(asked)
    else:
        cut = prompt_length(model[0], max_seq_length, "round-trip") if max_seq_length is not None else nullcontext()
        with cut:
            documents = model.encode_document(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=show_progress_bar)
            vectors = model.encode_query(asked, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=show_progress_bar)
        chunks = iter([np.asarray(vectors) @ np.asarray(documents).T])
    out: list[GeneratedQuery] = []
    for scores in chunks:
        for row in scores:
            owner, query = flat[len(out)]
            others = row.copy()
            others[owner] = -np.inf
            rank = int((others >= row[owner]).sum()) + 1
            kept = rank <= top_k
            negative = passages[int(others.argmax())].id if kept and hard_negatives and len(passages) > 1 else None
            out.append(GeneratedQuery(passages[owner].id, query, rank, kept, negative))
    return out


def training_data(passages: Sequence[Passage], generated: Sequence[GeneratedQuery], source: str) -> TrainingData:
    """The kept queries as (query, passage) pairs, or (query, passage, negative) triplets when
    every kept query has a hard negative."""
    text = {p.id: p.full_text for p in passages}
    kept = [g for g in generated if g.kept]
    if len(kept) < 2:
        raise DataError(
            f"{source}: {len(kept)} of {len(generated)} generated queries passed the round-trip filter; at least 2 are needed to train"
        )
    if all(g.negative_id is not None for g in kept):
        return TrainingData("triplets", [(g.query, text[g.passage_id], text[g.negative_id]) for g in kept], source)
    return TrainingData("pairs", [(g.query, text[g.passage_id]) for g in kept], source)


def write_pairs(path: str | Path, generated: Sequence[GeneratedQuery]) -> None:
    """One JSON object a line: ``passage_id``, ``query``, ``rank``, ``kept``, ``negative_id``."""
    with Path(path).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in generated)


def queries_from_corpus(
    model: Any,
    passages: Sequence[Passage],
    *,
    generator: str | None = None,
    per_passage: int = 1,
    max_passages: int | None = None,
    top_k: int = 3,
    hard_negatives: bool = False,
    ranker: Ranker = "bm25",
    pairs_out: str | Path | None = None,
    max_new_tokens: int = 32,
    max_passage_tokens: int = 256,
    drop_unfinished: bool = True,
    filter_max_seq_length: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    source: str = "generated queries",
    show_progress_bar: bool = True,
) -> TrainingData:
    """The whole recipe before training: ``generator`` (default: the decoder ``model`` was loaded
    from) writes ``per_passage`` queries a passage, ``ranker`` (``model`` or BM25) filters them by
    round trip (and mines hard negatives with ``hard_negatives``), ``pairs_out`` (when given) gets
    every query with its rank and fate, and the kept ones come back as training data. The
    generator is freed before the filter runs.

    ``hard_negatives`` is off by default: on SciFact (SmolLM2 echo, the same 1,328 queries)
    training with them scored the same as without (74.9 and 74.9 nDCG@10 on the 300-abstract
    sample) and took about twice as long.

    ``max_passages``: queries are written for a random sample of that many passages (under
    ``seed``, logged), and still ranked against every passage; writing is most of the time, and a
    few thousand queries are more than a short fine-tune uses.

    ``drop_unfinished``: leave out queries that run to ``max_new_tokens`` without ending
    (:func:`generate_queries`)."""
    name = generator or model[0].source
    if name is None:
        raise ValueError("name the generator: the model was built from a decoder object, so there is no checkpoint to write queries with")
    if max_passages is not None and max_passages < 1:
        raise ValueError(f"max_passages must be at least 1 (None: every passage), got {max_passages}")
    chosen = list(range(len(passages)))
    if max_passages is not None and max_passages < len(passages):
        chosen = sorted(np.random.default_rng(seed).choice(len(passages), max_passages, replace=False).tolist())
        logger.info("queries are written for %d of the %d passages (a sample under seed %d: max_passages)", max_passages, len(passages), seed)
    writer, tokenizer = load_generator(name, device=model.device)
    start = time.perf_counter()
    try:
        written_for = generate_queries(
            writer,
            tokenizer,
            [passages[i] for i in chosen],
            per_passage=per_passage,
            max_new_tokens=max_new_tokens,
            max_passage_tokens=max_passage_tokens,
            batch_size=batch_size,
            seed=seed,
            drop_unfinished=drop_unfinished,
            show_progress_bar=show_progress_bar,
        )
    finally:
        del writer
    written = time.perf_counter() - start
    logger.info("queries written in %.0f s (%.2f passages/s)", written, len(chosen) / written)
    queries: list[list[str]] = [[] for _ in passages]
    for i, asked in zip(chosen, written_for, strict=True):
        queries[i] = asked
    start = time.perf_counter()
    generated = round_trip(
        model,
        passages,
        queries,
        top_k=top_k,
        hard_negatives=hard_negatives,
        ranker=ranker,
        max_seq_length=filter_max_seq_length,
        show_progress_bar=show_progress_bar,
    )
    if pairs_out is not None:
        write_pairs(pairs_out, generated)
    kept = sum(g.kept for g in generated)
    logger.info(
        "%d queries written for %d passages; %d kept by the round trip (own passage in the top %d of %d), filtered in %.0f s",
        len(generated),
        len(chosen),
        kept,
        top_k,
        len(passages),
        time.perf_counter() - start,
    )
    return training_data(passages, generated, source)
