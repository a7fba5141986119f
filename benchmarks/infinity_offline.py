"""Infinity's own offline encode, for ``serve_load.py --infinity-python``: run with a Python that
has ``infinity-emb[torch,server]`` installed (it pins older sentence-transformers and transformers,
so it lives in a virtual environment of its own).

    INFINITY_PYTHON benchmarks/infinity_offline.py MODEL_FOLDER TEXTS.json OUT.npy

Embeds every text of ``TEXTS.json`` (a JSON list) with Infinity's Python engine (torch, CPU, plain
mean pooling, batches of 32), saves the vectors to ``OUT.npy``, then times the embedding of the
sample of texts named in the JSON's ``sample`` indices (twice, the faster counts) and prints
``{"offline_texts_per_s": ...}`` as its last line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
from infinity_emb import AsyncEmbeddingEngine, EngineArgs


async def main(folder: str, texts_path: str, out_path: str) -> dict:
    spec = json.loads(Path(texts_path).read_text(encoding="utf-8"))
    texts, sample = spec["texts"], [spec["texts"][i] for i in spec["sample"]]
    engine = AsyncEmbeddingEngine.from_args(
        EngineArgs(model_name_or_path=folder, engine="torch", device="cpu", batch_size=32, pooling_method="mean", model_warmup=False)
    )
    async with engine:
        vectors, _ = await engine.embed(sentences=texts)
        np.save(out_path, np.asarray(vectors, dtype=np.float32))
        rates = []
        for _ in range(2):
            started = time.perf_counter()
            await engine.embed(sentences=sample)
            rates.append(len(sample) / (time.perf_counter() - started))
    return {"offline_texts_per_s": round(max(rates), 2)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
