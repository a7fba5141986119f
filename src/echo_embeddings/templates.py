"""Templates: the prompt around a text, which of its tokens are pooled, and the named presets.

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
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


@dataclass(frozen=True)
class Preset:
    """A named strategy: the templates for symmetric, query and document inputs.

    Each task has a tuple of templates; with more than one (MetaEOL) the vectors of all of
    them are averaged. ``token_prepending`` turns the TP layer overwrite on for the preset's
    ``{tp}`` templates.
    """

    name: str
    sentence: tuple[Template, ...]
    query: tuple[Template, ...] = ()
    document: tuple[Template, ...] = ()
    description: str = ""
    token_prepending: bool = False

    def __post_init__(self) -> None:
        if not self.sentence:
            raise ValueError(f"Preset {self.name!r} has no sentence template")
        for group in (self.sentence, self.query, self.document):
            if len({t.pooling for t in group}) > 1:
                raise ValueError(f"Preset {self.name!r}: templates averaged together must share one pooling")
            if self.token_prepending and not all(t.has_placeholder for t in group):
                raise ValueError(f"Preset {self.name!r} uses token prepending, so every template needs a {{tp}} placeholder")

    def templates(self, task: str | None) -> tuple[Template, ...]:
        if task == "query":
            return self.query or self.sentence
        if task in ("document", "passage", "corpus"):
            return self.document or self.sentence
        return self.sentence


PRESETS: dict[str, Preset] = {}
DEFAULT_INSTRUCTION = "Retrieve passages that answer the question"


def register_preset(preset: Preset, *, overwrite: bool = False) -> Preset:
    """Add a strategy to the registry so that ``strategy="<name>"`` finds it everywhere."""
    if preset.name in PRESETS and not overwrite:
        raise ValueError(f"A preset named {preset.name!r} already exists; pass overwrite=True to replace it")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {sorted(PRESETS)} or a template string") from None


def _preset(
    name: str,
    sentence: str | list[str],
    pooling: Pooling,
    description: str,
    query: str | None = None,
    document: str | None = None,
    token_prepending: bool = False,
) -> None:
    parse = lambda specs: tuple(Template.parse(s, pooling) for s in ([specs] if isinstance(specs, str) else specs))  # noqa: E731
    register_preset(
        Preset(name, parse(sentence), parse(query) if query else (), parse(document) if document else (), description, token_prepending)
    )


_ECHO = "Rewrite the following sentence: {x}\nThe rewritten sentence: {x*}"
_ECHO_QUERY = "Instruct: {instruction}\nQuery: {x}\nQuery again: {x*}"
_ECHO_DOCUMENT = "Document: {x}\nDocument again: {x*}"
_EOL = 'This sentence : "{tp}{x}" means in one word:"'
_PCOT = 'After thinking step by step , this sentence : "{tp}{x}" means in one word:"'
_KE = (
    "The essence of a sentence is often captured by its main subjects and actions, while descriptive terms "
    'provide additional but less central details. With this in mind , this sentence : "{tp}{x}" means in one word:"'
)
# MetaEOL (Lei et al. 2024): four meta-tasks, two prompts each, vectors averaged. The wording
# follows the paper's description of its prompts; it is not copied from its released files.
_META = [
    'In this task, you\'re presented with a text excerpt. Your task is to categorize the excerpt into a broad category such as "Education", "Technology", "Health", "Business", "Environment", "Politics", or "Culture". For this task, this sentence : "{tp}{x}" should be classified under one general category in one word:"',
    'In this task, you\'re given a statement and you need to determine whether it presents an "Opinion" or a "Fact". For this task, this sentence : "{tp}{x}" discriminates between opinion and fact in one word:"',
    'In this task, you\'re given a review from an online platform. Your task is to rate it from 1 (extremely negative) to 5 (extremely positive). For this task, this sentence : "{tp}{x}" reflects the sentiment in one word:"',
    'In this task, you\'re reading a personal diary entry. Your task is to identify the predominant emotion expressed, such as "joy", "sadness", "anger", "fear", or "love". For this task, this sentence : "{tp}{x}" conveys the emotion in one word:"',
    'In this task, you\'re presented with two sentences. Your task is to assess whether they convey the same meaning, using "identical", "similar", "different", or "unrelated". For this task, this sentence : "{tp}{x}" means in one word:"',
    'In this task, you\'re given a sentence and a phrase. Your task is to determine whether the phrase can be a contextual synonym within the sentence. For this task, this sentence : "{tp}{x}" means in one word:"',
    'In this task, you\'re presented with a scientific abstract. Your task is to extract the key term that best represents its main finding. For this task, this sentence : "{tp}{x}" is summarized by the key term in one word:"',
    'In this task, you\'re given a news article. Your task is to identify the main entity it is about, such as a person, place or organization. For this task, this sentence : "{tp}{x}" is about the entity in one word:"',
]
# The released fine-tuned checkpoints pool the second copy plus a closing EOS.
_CKPT_QUERY = "Instruct: {instruction},\nQuery: {x}\nQuery again: {x*}{eos*}"
_CKPT_DOCUMENT = "Document: {x}\nDocument again: {x*}{eos*}"


def _no_tp(spec: str) -> str:
    return spec.replace("{tp}", "")


_preset("echo", _ECHO, "mean", "Echo (Springer et al. 2024): mean over the second copy", _ECHO_QUERY, _ECHO_DOCUMENT)
_preset("echo-last", _ECHO, "last", "Echo, last token of the second copy", _ECHO_QUERY, _ECHO_DOCUMENT)
_preset(
    "echo-paragraph",
    "Rewrite the following paragraph: {x}\nThe rewritten paragraph: {x*}",
    "mean",
    "Echo with a paragraph prompt, for long inputs",
    _ECHO_QUERY,
    _ECHO_DOCUMENT,
)
_preset("mean", "Write a sentence: {x}", "mean", "Classical: mean over the text after a short prompt")
_preset("last", "Write a sentence: {x}", "last", "Classical: last token of the text after a short prompt")
_preset("raw-mean", "{x}", "mean", "Mean over the text, no prompt at all")
for _name, _spec, _what in (
    ("prompteol", _EOL, "PromptEOL (Jiang et al. 2023): last token of a one-word summary prompt"),
    ("pcot", _PCOT, "Pretended chain of thought (Zhang et al. 2024)"),
    ("ke", _KE, "Knowledge enhancement (Zhang et al. 2024)"),
    ("metaeol", _META, "MetaEOL (Lei et al. 2024): 8 meta-task prompts, vectors averaged"),
):
    _preset(_name, [_no_tp(s) for s in ([_spec] if isinstance(_spec, str) else _spec)], "last", _what)
    _preset(f"{_name}+tp", _spec, "last", f"{_what}, with token prepending (Fu et al. 2024)", token_prepending=True)
for _checkpoint_pooling in ("last", "mean"):
    _preset(
        f"echo-mistral-{_checkpoint_pooling}token",
        _CKPT_QUERY,  # the checkpoints use their query template for symmetric tasks too
        _checkpoint_pooling,  # type: ignore[arg-type]
        f"Templates of jspringer/echo-mistral-7b-instruct-{_checkpoint_pooling}token",
        _CKPT_QUERY,
        _CKPT_DOCUMENT,
    )

CHECKPOINT_PRESETS = {
    "jspringer/echo-mistral-7b-instruct-lasttoken": "echo-mistral-lasttoken",
    "jspringer/echo-mistral-7b-instruct-meantoken": "echo-mistral-meantoken",
}


# --------------------------------------------------------------------------------------------
# Spans: a template laid out in token ids for one tokenizer.


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
