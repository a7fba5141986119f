"""Late chunking with the embedded SmolLM2-135M: chunk vectors that read the whole document, stored in
Qdrant (local mode, no server) through LangChain and through LlamaIndex, then queried.

    pip install langchain-qdrant llama-index-vector-stores-qdrant   # the stores (in the test extras)
    python examples/late_chunking.py
"""

from __future__ import annotations

DOCUMENTS = [
    (
        "Berlin is the capital and largest city of Germany. Its population is about 3.7 million, the most of any "
        "city in the European Union. It lies on the Spree and has been the seat of government since 1999."
    ),
    (
        "Lyon is a city in France, at the confluence of the Rhône and the Saône. Its population is about 520,000. "
        "It is known for its cuisine and for the Festival of Lights held every December."
    ),
]
QUERY = "How many people live in the German capital?"


def with_langchain() -> None:
    from langchain_core.documents import Document
    from langchain_qdrant import QdrantVectorStore

    from langchain_echo_embeddings import EchoEmbeddings, EchoLateChunker

    chunker = EchoLateChunker(embeddings=EchoEmbeddings(model="smollm2-135m"), chunk_tokens=24)
    chunks = chunker.split_documents([Document(page_content=t, metadata={"doc": i}) for i, t in enumerate(DOCUMENTS)])
    store = QdrantVectorStore.from_documents(chunks, chunker, location=":memory:", collection_name="docs")
    print(f"LangChain: {len(chunks)} late chunks stored; {QUERY}")
    for document, score in store.similarity_search_with_score(QUERY, k=3):
        print(f"   {score:.3f}  doc {document.metadata['doc']} @{document.metadata['start_index']}: {document.page_content!r}")


def with_llama_index() -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    from llama_index.embeddings.echo import EchoEmbedding, EchoLateChunkNodeParser

    embed_model = EchoEmbedding(model_name="smollm2-135m")
    store = QdrantVectorStore(client=QdrantClient(location=":memory:"), collection_name="docs")
    pipeline = IngestionPipeline(transformations=[EchoLateChunkNodeParser(embed_model=embed_model, chunk_tokens=24)], vector_store=store)
    nodes = pipeline.run(documents=[Document(text=t) for t in DOCUMENTS])
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    print(f"LlamaIndex: {len(nodes)} late-chunked nodes stored; {QUERY}")
    for found in index.as_retriever(similarity_top_k=3).retrieve(QUERY):
        print(f"   {found.score:.3f}  @{found.node.start_char_idx}: {found.node.get_content()!r}")


if __name__ == "__main__":
    with_langchain()
    with_llama_index()
