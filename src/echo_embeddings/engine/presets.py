"""Presets: named strategies (echo, PromptEOL, token prepending, ...) and their registry.

A preset holds the templates of each task: symmetric ``sentence`` inputs, retrieval ``query``
and ``document`` inputs. ``strategy="<name>"`` finds a preset anywhere in the package;
:func:`register_preset` adds your own.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inputs import normalize_task
from .template import Pooling, Template


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
        """The templates of ``task`` (any spelling :func:`~echo_embeddings.engine.inputs.normalize_task` accepts)."""
        task = normalize_task(task)
        if task == "query":
            return self.query or self.sentence
        if task == "document":
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


def as_preset(strategy: str | Preset | Template, pooling: Pooling | None = None) -> Preset:
    """A registered name, a Preset, a Template, or a template string such as ``"Say: {x*}"``.

    ``pooling`` applies to a template string (default ``"mean"``); a named preset or a Preset
    brings its own, and a different ``pooling`` for one is an error rather than silently ignored.
    """
    if isinstance(strategy, str) and "{" in strategy:
        strategy = Template.parse(strategy, pooling or "mean")
    if isinstance(strategy, Template):
        if pooling is not None and pooling != strategy.pooling:
            raise ValueError(f"The template {strategy.spec!r} pools {strategy.pooling!r}, but pooling={pooling!r} was passed")
        return Preset(strategy.spec or "custom", (strategy,), token_prepending=strategy.has_placeholder)
    preset = strategy if isinstance(strategy, Preset) else get_preset(strategy)
    if pooling is not None and pooling != preset.sentence[0].pooling:
        raise ValueError(
            f"Strategy {preset.name!r} pools {preset.sentence[0].pooling!r}; pooling={pooling!r} only applies to a template string"
        )
    return preset
