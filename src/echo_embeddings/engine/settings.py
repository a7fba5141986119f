"""The settings of an echo model: one frozen dataclass whose fields are exactly what a save writes.

Each field is checked for its type and range when a settings object is built; checks that need
the model (does it have that layer? can it pack?) run in :meth:`Engine.configure
<echo_embeddings.engine.Engine.configure>`. The engine and the sentence-transformers module both
expose every field as an attribute that reads what runs (a ``None`` default resolved) and, when
set, validates and applies at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from .presets import DEFAULT_INSTRUCTION, PRESETS, Preset
from .template import Pooling, Template

DEFAULT_BATCH_SIZE = 256
"""Most texts per forward unless the caller says otherwise; below it the token budget decides."""
DEFAULT_MAX_SEQ_LENGTH = 4096
"""Most tokens of a whole prompt unless set, capped at the model's context: echo reads documents of
about 2,000 tokens whole (LlamaIndex sends 1,024-token chunks by default). Long rows do not
inflate batches: the token budget runs them in smaller ones."""
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768}
"""Token budget of a batch (rows x width) on CPU / CUDA: measured best for SmolLM2 on 2 cores;
GPUs need large batches to fill. A single row longer than the budget still runs alone."""


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class EmbedderSettings:
    """How an echo model embeds; every field is saved in ``echo_embeddings_config.json``.

    Attributes:
        strategy: a preset name (``"echo"``, ``"prompteol+tp"``, ...) or a template string such
            as ``"Say: {x*}"``. A registered :class:`Preset` or a :class:`Template` is accepted
            and stored by its name or template string.
        pooling: ``"mean"`` or ``"last"`` for a template string; a preset brings its own (None).
        instruction: fills the ``{instruction}`` field of query templates.
        max_seq_length: most tokens of a whole prompt; longer texts are truncated before
            repetition, with a warning (``encode_chunks`` reads them whole in windows instead).
            ``None``: 4,096, or the model's context if shorter.
        output_layer: the hidden state to pool (transformers' ``hidden_states`` index; ``-1`` the
            final output); ``None`` for the per-model default of the strategy.
        final_norm: apply the final norm to an intermediate output layer.
        tp_layers: ``(start, stop)`` layers of the token-prepending overwrite for a ``+tp``
            strategy; ``None`` for the per-model default. Equal values run the base prompt.
        placeholder_token: the token that stands for ``{tp}`` (an existing one; default UNK/PAD/EOS).
        padding_side: ``"right"`` or ``"left"`` for padded batches.
        prefix_cache: compute the template's constant prefix once and reuse its keys and values.
        packing: pack batches without padding: ``None`` wherever the model and a kernel allow,
            ``True`` always (or an error), ``False`` never.
        max_batch_tokens: the token budget of a batch; ``None`` for the device's default.
        matryoshka_dims: the sizes a Matryoshka loss trained the vectors to work at (``train
            --matryoshka-dims``): their leading dimensions can be kept alone (the server's
            ``dimensions``). ``None`` for a model not trained so. It does not change the vectors.
    """

    strategy: str = "echo"
    pooling: Pooling | None = None
    instruction: str = DEFAULT_INSTRUCTION
    max_seq_length: int | None = None
    output_layer: int | None = None
    final_norm: bool = False
    tp_layers: tuple[int, int] | None = None
    placeholder_token: str | int | None = None
    padding_side: str = "right"
    prefix_cache: bool = True
    packing: bool | None = None
    max_batch_tokens: int | None = None
    matryoshka_dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        strategy: Any = self.strategy
        if isinstance(strategy, Preset):
            if PRESETS.get(strategy.name) is not strategy:
                raise ValueError(f"Register preset {strategy.name!r} (register_preset) so that a saved model can find it again")
            self._set("strategy", strategy.name)
        elif isinstance(strategy, Template):
            if self.pooling is not None and self.pooling != strategy.pooling:
                raise ValueError(f"The template {strategy.spec!r} pools {strategy.pooling!r}, but pooling={self.pooling!r} was passed")
            self._set("strategy", strategy.spec)
            self._set("pooling", strategy.pooling)
        elif not isinstance(strategy, str):
            raise TypeError(f"strategy must be a preset name, a template string, a Preset or a Template, got {type(strategy).__name__}")
        if self.pooling not in (None, "mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {self.pooling!r}")
        if not isinstance(self.instruction, str):
            raise TypeError(f"instruction must be a str, got {type(self.instruction).__name__}")
        for name in ("max_seq_length", "max_batch_tokens"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if self.output_layer is not None and (isinstance(self.output_layer, bool) or not isinstance(self.output_layer, int)):
            raise TypeError(f"output_layer must be an int or None, got {self.output_layer!r}")
        if self.tp_layers is not None:
            value: Any = self.tp_layers
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2 or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in value
            ):
                raise TypeError(f"tp_layers must be two ints (start, stop), got {value!r}")
            self._set("tp_layers", (int(value[0]), int(value[1])))
        if not isinstance(self.final_norm, bool):
            raise TypeError(f"final_norm must be True or False, got {self.final_norm!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not isinstance(self.prefix_cache, bool):
            raise TypeError(f"prefix_cache must be True or False, got {self.prefix_cache!r}")
        if self.packing not in (None, True, False):
            raise TypeError(f"packing must be None, True or False, got {self.packing!r}")
        if self.matryoshka_dims is not None:
            dims: Any = self.matryoshka_dims
            if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or not dims or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims
            ):
                raise TypeError(f"matryoshka_dims must be positive ints, got {dims!r}")
            self._set("matryoshka_dims", tuple(sorted(set(int(d) for d in dims))))
        if self.placeholder_token is not None and not isinstance(self.placeholder_token, (str, int)):
            raise TypeError(f"placeholder_token must be a token string or id, got {self.placeholder_token!r}")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising inside __post_init__ of a frozen dataclass

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "the config") -> EmbedderSettings:
        """Settings from a saved config; an unknown key is an error that names it."""
        unknown = sorted(set(config) - set(SETTING_NAMES))
        if unknown:
            raise ValueError(f"{source}: unknown settings {unknown}; known: {list(SETTING_NAMES)}")
        return cls(**config)


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(EmbedderSettings))
"""The field names, in order: the sentence-transformers module's ``config_keys``."""


class SettingAttribute:
    """An attribute that reads a setting as it runs and sets it through ``configure``: declared for
    every field of :class:`EmbedderSettings` on the engine (and, through ``owner_engine``, on the
    sentence-transformers module), so no setting is written out twice."""

    def __init__(self, owner_engine: Any = None) -> None:
        self.owner_engine = owner_engine or (lambda obj: obj)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else self.owner_engine(obj).resolved(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        self.owner_engine(obj).configure(**{self.name: value})


def with_setting_attributes(owner_engine: Any = None) -> Any:
    """Class decorator: one :class:`SettingAttribute` per settings field."""

    def decorate(cls: type) -> type:
        for name in SETTING_NAMES:
            attribute = SettingAttribute(owner_engine)
            attribute.__set_name__(cls, name)
            setattr(cls, name, attribute)
        return cls

    return decorate
