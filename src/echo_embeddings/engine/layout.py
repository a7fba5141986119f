"""Token layout: a template laid out in one tokenizer's ids, and the tokenizer wrapper that makes
separately tokenized pieces concatenate cleanly."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .template import Piece, Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Layout:
    """A template in token ids: fixed pieces tokenized once, input slots filled per text.

    ``segments`` holds, per piece, either a tuple of fixed ids or ``None`` for an input slot;
    ``pooled`` says which pieces are pooled. ``prefix``/``suffix`` are the tokenizer's own
    special tokens around the whole sequence.
    """

    template: Template
    segments: tuple[tuple[int, ...] | None, ...]
    pooled: tuple[bool, ...]
    placeholder_piece: int | None
    lead: str
    filler: int

    @property
    def fixed_length(self) -> int:
        return sum(len(s) for s in self.segments if s is not None)

    @property
    def constant_prefix(self) -> tuple[int, ...]:
        """The ids every text shares at the start (BOS, instruction, ``Rewrite ...: ``): the fixed
        pieces before the first input, placeholder or pooled piece. The engine caches their keys
        and values instead of recomputing them for every text."""
        ids: list[int] = []
        for i, seg in enumerate(self.segments):
            if seg is None or i == self.placeholder_piece or self.pooled[i]:
                break
            ids.extend(seg)
        return tuple(ids)

    def copies(self, text_length: int) -> list[int]:
        """Where each copy of a ``text_length``-token text starts in :meth:`build`'s ids."""
        position, starts = 0, []
        for seg in self.segments:
            if seg is None:
                starts.append(position)
            position += text_length if seg is None else len(seg)
        return starts

    def pooled_copy(self, text_length: int) -> int:
        """Where the pooled copy of a ``text_length``-token text starts (echo: the second copy).
        Raises ValueError if the template pools no copy of the text."""
        flags = [pooled for seg, pooled in zip(self.segments, self.pooled) if seg is None]
        pooled = [start for start, flag in zip(self.copies(text_length), flags) if flag]
        if not pooled:
            raise ValueError(f"The template {self.template.spec!r} pools no copy of the text")
        return pooled[-1]

    def build(self, text_ids: list[int]) -> tuple[list[int], list[int], int | None]:
        """Ids, pooled positions and the placeholder position for one tokenized text."""
        ids: list[int] = []
        pooled: list[int] = []
        placeholder = None
        for i, seg in enumerate(self.segments):
            part = text_ids if seg is None else seg
            if i == self.placeholder_piece:
                placeholder = len(ids)
            if self.pooled[i]:
                pooled.extend(range(len(ids), len(ids) + len(part)))
            ids.extend(part)
        if not ids:
            # Nothing at all to read (no prompt, no BOS, empty text): read one filler token.
            return [self.filler], [0], placeholder
        if not pooled:
            # An empty pooled span (empty input): pool the token just before where it would be,
            # i.e. the model's state after reading the prompt. Documented in the README.
            start = next(i for i, p in enumerate(self.pooled) if p)
            pooled = [max(sum(len(s) if s is not None else 0 for s in self.segments[:start]) - 1, 0)]
        return ids, pooled, placeholder


class PieceTokenizer:
    """Tokenizes template pieces and texts so that their ids concatenate cleanly.

    SentencePiece tokenizers with a dummy prefix (Llama-2, Mistral) put a word-boundary marker
    in front of every separately tokenized string; we strip it so a piece tokenizes as it would
    mid-sentence.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, placeholder_token: str | int | None = None) -> None:
        self.tokenizer = tokenizer
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        start = _find_sub(with_special, bare)
        self.prefix: tuple[int, ...] = tuple(with_special[:start]) if start >= 0 else ()
        self.suffix: tuple[int, ...] = tuple(with_special[start + len(bare) :]) if start >= 0 else ()
        self._anchor = tokenizer("\n", add_special_tokens=False)["input_ids"]
        first = tokenizer.convert_ids_to_tokens(bare[:1])
        self.dummy_prefix = bool(first) and isinstance(first[0], str) and first[0].startswith("\u2581") and len(self._anchor) > 0
        self.placeholder_id = self._resolve_placeholder(placeholder_token)
        self._cache: dict[str, tuple[int, ...]] = {}

    def _resolve_placeholder(self, token: str | int | None) -> int:
        tok = self.tokenizer
        if isinstance(token, int):
            return token
        if token is not None:
            ids = tok.convert_tokens_to_ids([token])
            if ids and ids[0] is not None and ids[0] != tok.unk_token_id:
                return int(ids[0])
            encoded = self.encode(token)
            if len(encoded) != 1:
                raise ValueError(f"placeholder_token {token!r} is {len(encoded)} tokens for this tokenizer; it must be exactly one")
            return encoded[0]
        # A harmless existing token: never resize the vocabulary (Fu et al. show the init barely matters).
        for candidate in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return self.encode(" ")[0]

    def encode(self, text: str, literal: bool = False) -> list[int]:
        """Ids for ``text`` as it reads mid-sentence; ``literal`` keeps special-token strings as text."""
        if not text:
            return []
        if not self.dummy_prefix:
            return self._ids(text, literal)
        ids = self._ids("\n" + text, literal)
        n = len(self._anchor)
        return ids[n:] if ids[:n] == self._anchor else self._ids(text, literal)

    def _ids(self, text: str | list[str], literal: bool) -> list:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=literal)["input_ids"]

    def encode_inputs(self, texts: list[str], lead: str = "") -> list[list[int]]:
        """Tokenize user texts (each with the layout's ``lead``), special-token strings kept literal.

        One fast-tokenizer call for the whole list. An empty text stays empty (no lone lead
        space), so its pooled span falls back to the token before it.
        """
        texts = [lead + t if t else "" for t in texts]
        if not texts:
            return []
        if not self.dummy_prefix:
            return self._ids(texts, literal=True)
        return [self.encode(t, literal=True) for t in texts]

    def encode_with_offsets(self, text: str, lead: str = "") -> tuple[list[int], list[tuple[int, int]]]:
        """The ids :meth:`encode_inputs` gives ``text`` plus each token's character span in ``text``
        (a token that covers the lead space starts at 0). Needs a fast tokenizer."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise TypeError(f"{type(self.tokenizer).__name__} is not a fast tokenizer; character offsets (late chunking) need one")
        if not text:
            return [], []
        anchor = self._anchor if self.dummy_prefix else []
        shift = (1 if anchor else 0) + len(lead)
        found = self.tokenizer(("\n" if anchor else "") + lead + text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = found["input_ids"], found["offset_mapping"]
        if anchor and ids[: len(anchor)] == anchor:
            ids, offsets = ids[len(anchor) :], offsets[len(anchor) :]
        elif anchor:  # encode() falls back to tokenizing the text alone here
            shift = len(lead)
            found = self.tokenizer(lead + text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
            ids, offsets = found["input_ids"], found["offset_mapping"]
        return list(ids), [(min(max(a - shift, 0), len(text)), min(max(b - shift, 0), len(text))) for a, b in offsets]

    def fixed(self, text: str) -> tuple[int, ...]:
        if text not in self._cache:
            self._cache[text] = tuple(self.encode(text))
        return self._cache[text]

    def layout(self, template: Template, instruction: str = "", placeholder: bool = True) -> Layout:
        """Lay a template out in ids. A space that ends the text before ``{x}`` moves into the
        input (``lead``), so the input tokenizes as a word-initial span the way it would inline.
        With ``placeholder=False`` a ``{tp}`` piece is left out (token prepending off)."""
        pieces: list[Piece] = []
        for p in template.pieces:
            if p.kind == "placeholder" and not placeholder:
                continue
            if pieces and p.kind == "text" and pieces[-1].kind == "text" and p.pooled == pieces[-1].pooled:
                pieces[-1] = replace(pieces[-1], text=pieces[-1].text + p.text)  # tokenize as one string
            else:
                pieces.append(p)
        lead = ""
        for i, p in enumerate(pieces):
            if p.kind == "input" and i > 0 and pieces[i - 1].kind == "text" and pieces[i - 1].text.endswith(" "):
                lead = " "
        if lead:
            pieces = [
                replace(p, text=p.text[:-1]) if p.kind == "text" and i + 1 < len(pieces) and pieces[i + 1].kind == "input" and p.text.endswith(" ") else p
                for i, p in enumerate(pieces)
            ]
        tok = self.tokenizer
        segments: list[tuple[int, ...] | None] = []
        placeholder_piece = None
        for i, p in enumerate(pieces):
            if p.kind == "input":
                segments.append(None)
            elif p.kind == "text":
                segments.append(self.fixed(p.text))
            elif p.kind == "instruction":
                segments.append(self.fixed(instruction))
            elif p.kind == "bos":
                segments.append(_special(tok.bos_token_id, "bos"))
            elif p.kind == "eos":
                segments.append(_special(tok.eos_token_id, "eos"))
            else:
                placeholder_piece = i
                segments.append((self.placeholder_id,))
        segments = [self.prefix, *segments, self.suffix]
        pooled = (False, *(p.pooled for p in pieces), False)
        if placeholder_piece is not None:
            placeholder_piece += 1
        filler = next((t for t in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) if t is not None), 0)
        return Layout(template, tuple(segments), pooled, placeholder_piece, lead, int(filler))


def _special(token_id: int | None, name: str) -> tuple[int, ...]:
    if token_id is None:
        raise ValueError(f"The template uses {{{name}}} but this tokenizer has no {name} token")
    return (int(token_id),)


def _find_sub(seq: list[int], sub: list[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1
