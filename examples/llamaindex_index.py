"""A LlamaIndex vector index over echo embeddings of the embedded SmolLM2-135M (no network needed).

    python examples/llamaindex_index.py
"""

from __future__ import annotations

from llama_index.core import Document, Settings, VectorStoreIndex

from llama_index.embeddings.echo import EchoEmbedding

DOCUMENTS = [
    "Echo embeddings repeat the input so that every pooled token has read the whole text.",
    "Paris is the capital and largest city of France.",
    "A sourdough loaf needs flour, water, salt and a lively starter.",
    "The heart pumps blood through the arteries and veins.",
]

Settings.embed_model = EchoEmbedding(model_name="smollm2-135m", strategy="echo")
index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS])
retriever = index.as_retriever(similarity_top_k=2)
for query in ("What is the capital of France?", "How do I make bread?", "Why repeat the sentence?"):
    print(query)
    for hit in retriever.retrieve(query):
        print(f"    {hit.score:.3f}  {hit.node.get_content()}")
