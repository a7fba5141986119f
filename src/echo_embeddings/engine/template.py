"""Template grammar: the prompt around a text and which of its pieces are pooled.

A template is a short string such as ``"Rewrite the following sentence: {x}\\nThe rewritten
sentence: {x*}"``. Fields in braces:

``{x}``            the input text (every copy uses the same token ids)
``{instruction}``  a task instruction, filled in per call (retrieval queries)
``{bos}``/``{eos}`` the tokenizer's BOS / EOS token, when a template needs one explicitly
``{tp}``           the token-prepending placeholder (one token)

A trailing ``*`` (``{x*}``, ``{eos*}``) marks a piece as pooled. With no ``*`` at all, ``mean``
pools the last ``{x}`` and ``last`` pools the last piece. ``{{`` and ``}}`` are literal braces.
The tokenizer's own special tokens (Llama's or Gemma's BOS, ...) are added around the whole
sequence automatically and are never pooled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

Pooling = Literal["mean", "last"]
PieceKind = Literal["text", "input", "instruction", "bos", "eos", "placeholder"]

_FIELDS: dict[str, PieceKind] = {
    "x": "input",
    "instruction": "instruction",
    "bos": "bos",
    "eos": "eos",
    "tp": "placeholder",
}
_FIELD_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Piece:
    """One part of a template: fixed text, the input, or a single special token."""

    kind: PieceKind
    text: str = ""
    pooled: bool = False


@dataclass(frozen=True)
class Template:
    """A sequence of pieces plus the pooling rule; build one with :meth:`parse`."""

    pieces: tuple[Piece, ...]
    pooling: Pooling = "mean"
    spec: str = field(default="", compare=False)

    @classmethod
    def parse(cls, spec: str, pooling: Pooling = "mean") -> Template:
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        pieces: list[Piece] = []
        literal: list[str] = []
        pos = 0
        for m in _FIELD_RE.finditer(spec):
            literal.append(spec[pos : m.start()])
            pos = m.end()
            token = m.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
                continue
            if m.group(1) is None:
                raise ValueError(f"Unbalanced brace at position {m.start()} in template {spec!r}; write {{{{ or }}}} for a literal brace")
            name = m.group(1).strip()
            pooled = name.endswith("*")
            name = name.rstrip("*").strip()
            if name not in _FIELDS:
                raise ValueError(f"Unknown field {{{m.group(1)}}} in template {spec!r}; expected one of {sorted(_FIELDS)}")
            if literal and "".join(literal):
                pieces.append(Piece("text", "".join(literal)))
            literal = []
            pieces.append(Piece(_FIELDS[name], pooled=pooled))
        tail = "".join(literal) + spec[pos:]
        if tail:
            pieces.append(Piece("text", tail))
        if not any(p.kind == "input" for p in pieces):
            raise ValueError(f"Template {spec!r} has no {{x}} field for the input text")
        if sum(p.kind == "placeholder" for p in pieces) > 1:
            raise ValueError(f"Template {spec!r} has more than one {{tp}} placeholder")
        if not any(p.pooled for p in pieces):
            default = max(i for i, p in enumerate(pieces) if p.kind == "input") if pooling == "mean" else len(pieces) - 1
            pieces[default] = replace(pieces[default], pooled=True)
        return cls(tuple(pieces), pooling, spec)

    @property
    def has_placeholder(self) -> bool:
        return any(p.kind == "placeholder" for p in self.pieces)

    @property
    def copies(self) -> int:
        """How many times the input appears (echo: 2)."""
        return sum(p.kind == "input" for p in self.pieces)

    def render(self, text: str, instruction: str = "") -> str:
        """The prompt as a human would read it (for docs and debugging, not for tokenizing)."""
        names = {"input": text, "instruction": instruction, "bos": "<bos>", "eos": "<eos>", "placeholder": "<tp>"}
        return "".join(p.text if p.kind == "text" else names[p.kind] for p in self.pieces)
