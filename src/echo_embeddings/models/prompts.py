"""The task instructions a model can carry as its sentence-transformers ``prompts``, so that MTEB
(which looks prompts up by task type) runs each task with its template and instruction, with no
code on the user's side.

The echo paper ran MTEB with an instruction per task in its query template (``Instruct: ...
Query: {x} Query again: {x*}``) and retrieval documents in the document template, without one.
This table follows that style, one instruction per MTEB task type, in our own words:

- a ``prompt`` for symmetric inputs (STS, classification, clustering, ...) goes to the query
  template's ``{instruction}`` (see :meth:`EchoEmbedder.prompt_task`);
- retrieval and reranking queries get an instruction; their documents get none (the empty prompt
  keeps the document template as it is);
- the names ``query`` and ``document`` stay empty, so ``encode_query`` / ``encode_document``
  without a task type keep the model's own default instruction.

Measured on the two embedded models (``benchmarks/mteb_instructions.py``, six local MTEB tasks),
the table costs the zero-shot ``echo`` preset 0.8 (SmolLM2) and 1.8 (Gemma 3) points on average,
up to 3 on STS-B and Banking77: small models not trained with instructions read them as noise. So ``load`` gives
the table only to presets whose symmetric template already takes an instruction (the released
echo checkpoints, fine-tuned with instructions); for the others it is one line to turn on::

    model.prompts.update(TASK_INSTRUCTIONS)

Presets without any ``{instruction}`` field never get it: there a prompt would be prepended to
the text, which is not what those methods were measured with.
"""

from __future__ import annotations

from ..engine.presets import Preset

TASK_INSTRUCTIONS: dict[str, str] = {
    "STS": "Retrieve sentences that mean the same as the given sentence",
    "Summarization": "Given a summary, retrieve other summaries with the same content",
    "BitextMining": "Retrieve sentences that say the same thing in another language",
    "PairClassification": "Retrieve texts that say the same thing as the given text",
    "Classification": "Classify the given text by its topic, intent or sentiment",
    "MultilabelClassification": "Classify the given text by its topics",
    "Clustering": "Identify the main topic of the given text",
    "Retrieval-query": "Given a question or claim, retrieve passages that answer or support it",
    "Retrieval-document": "",
    "Reranking-query": "Given a query, retrieve the documents most relevant to it",
    "Reranking-document": "",
}
"""Instruction per MTEB task type (``Type-query`` / ``Type-document`` for asymmetric tasks)."""

TASK_NAMES_ONLY: dict[str, str] = {"query": "", "document": ""}
"""What every model carries: empty prompts named ``query`` and ``document``, through which
harnesses that select prompts by name reach the query and document templates."""


def takes_instructions(preset: Preset, group: str = "sentence") -> bool:
    """Whether the templates of ``group`` (``sentence`` or ``query``) have an ``{instruction}``."""
    return any(piece.kind == "instruction" for template in getattr(preset, group) for piece in template.pieces)


def default_prompts(preset: Preset) -> dict[str, str]:
    """The sentence-transformers ``prompts`` of a model that embeds with ``preset``: the table for
    a preset whose symmetric inputs take an instruction, the empty names otherwise."""
    if takes_instructions(preset, "sentence"):
        return {**TASK_NAMES_ONLY, **TASK_INSTRUCTIONS}
    return dict(TASK_NAMES_ONLY)
