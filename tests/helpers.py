"""Test helpers: tokenizers trained in-process, tiny random decoders of many architectures, an
event-loop probe. Nothing here downloads anything; a tiny model builds in well under a second.

Shared by the core and both integrations' tests (``pythonpath = ["tests"]`` in pyproject.toml):

    from helpers import bpe_tokenizer, tiny_decoder, save_tiny_model
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModel,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from echo_embeddings.engine.packing import register_packed_attention

IMPLEMENTATION = register_packed_attention()

T = TypeVar("T")

CORPUS = [
    "A man is playing a guitar.",
    "Someone plays an instrument on the stage.",
    "The stock market fell sharply today after the announcement.",
    'She said "hello" to {everyone} in the room, then left.',
    "Rewrite the following sentence: the rewritten sentence means in one word",
    "Query again: document again, instruct and retrieve passages that answer the question.",
    "Echo embeddings repeat the text so every token sees all of it.",
    "Dogs run in the park; cats sleep on the sofa.",
    "1234567890 numbers, punctuation!? and UPPER lower Mixed case.",
    "Über café naïve — unicode and émojis 🎸 too.",
] * 3


def _train(model: models.Model, trainer: trainers.Trainer, pre: pre_tokenizers.PreTokenizer, decoder: decoders.Decoder) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre
    tok.decoder = decoder
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@lru_cache(maxsize=1)
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE, no BOS (like SmolLM2 or Qwen)."""
    tok = _train(
        models.BPE(),
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@lru_cache(maxsize=1)
def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-2 style: metaspace with a dummy prefix on every string, BOS added, byte fallback."""
    tok = _train(
        models.BPE(unk_token="<unk>", byte_fallback=True),
        trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
        decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="always"), decoders.ByteFallback()]),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
ARCHITECTURES: dict[str, Callable[[int], object]] = {
    "llama": lambda v: LlamaConfig(vocab_size=v, **_SMALL),
    "mistral": lambda v: MistralConfig(vocab_size=v, **_SMALL),
    "qwen2": lambda v: Qwen2Config(vocab_size=v, **_SMALL),
    "qwen3": lambda v: Qwen3Config(vocab_size=v, head_dim=8, **_SMALL),
    "gemma2": lambda v: Gemma2Config(vocab_size=v, head_dim=8, **_SMALL),
    "gemma3": lambda v: Gemma3TextConfig(vocab_size=v, head_dim=8, sliding_window=16, **_SMALL),
    "phi3": lambda v: Phi3Config(vocab_size=v, pad_token_id=0, bos_token_id=1, eos_token_id=2, **_SMALL),
    "gpt2": lambda v: GPT2Config(vocab_size=v, bos_token_id=0, eos_token_id=0, n_embd=32, n_layer=4, n_head=4, n_positions=512),
    "gpt_neox": lambda v: GPTNeoXConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4),
}


def tiny_decoder(arch: str, vocab_size: int, seed: int = 0, packed: bool = True) -> torch.nn.Module:
    """A random 4-layer, 32-wide bare decoder; the same seed gives the same weights. With
    ``packed`` it gets the ``echo_packed`` attention implementation where the architecture allows
    it, as ``echo_embeddings.load`` gives it; otherwise transformers' default."""
    config = ARCHITECTURES[arch](vocab_size)
    options = {"attn_implementation": IMPLEMENTATION} if packed and not getattr(config, "attn_logit_softcapping", None) else {}
    with torch.random.fork_rng():  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = AutoModel.from_config(config, dtype=torch.float32, **options)
    return model.eval()


def save_tiny_model(folder: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny random decoder and the BPE tokenizer saved as a transformers folder."""
    tokenizer = bpe_tokenizer()
    tiny_decoder(arch, len(tokenizer), seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def save_dense_model(folder: str | Path, strategy: str = "echo") -> Path:
    """A saved echo model whose module list goes on after the echo module (Dense 32 -> 8, then
    Normalize), as users extend models in sentence-transformers; returns its folder."""
    import echo_embeddings
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    folder = Path(folder)
    base = echo_embeddings.load(str(save_tiny_model(folder / "decoder")), strategy, device="cpu")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        dense = Dense(32, 8)
    model = echo_embeddings.EchoSentenceTransformer(modules=[base[0], dense, Normalize()], device="cpu", prompts={"query": "", "document": ""})
    model.save(str(folder / "dense"))
    return folder / "dense"


def save_lora_model(folder: str | Path) -> Path:
    """A saved echo model that is a LoRA adapter (random, so it changes the vectors) on a tiny
    saved base; the folder holds the adapter alone and names the base."""
    import echo_embeddings

    folder = Path(folder)
    model = echo_embeddings.load(str(save_tiny_model(folder / "base")), "echo", device="cpu")
    echo_embeddings.add_lora(model, r=4, layers=[2, 3])
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    model.save(str(folder / "adapter"))
    return folder / "adapter"


def assert_same_as_the_saved_model(folder: str | Path, embed_documents: Callable[[list[str]], list], embed_query: Callable[[str], list]) -> None:
    """An adapter's document and query vectors (unit length, the adapters' default) equal the saved
    model's ``encode_document`` / ``encode_query`` (its whole module list), to 1e-5."""
    import echo_embeddings

    model = echo_embeddings.load(str(folder), device="cpu")
    texts = ["A man is playing a guitar.", "", "Dogs run."]
    documents = torch.tensor(embed_documents(texts))
    assert documents.shape == (3, model.get_embedding_dimension())
    assert (documents - model.encode_document(texts, convert_to_tensor=True, normalize_embeddings=True)).abs().max() <= 1e-5
    query = torch.tensor(embed_query("what plays music?"))
    assert (query - model.encode_query(["what plays music?"], convert_to_tensor=True, normalize_embeddings=True)[0]).abs().max() <= 1e-5


async def loop_ticks_during(awaitable: Awaitable[T]) -> tuple[T, int]:
    """Await ``awaitable`` while counting event-loop turns: a blocking call leaves the count near 0."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        result = await awaitable
    finally:
        done.set()
        await task
    return result, ticks
