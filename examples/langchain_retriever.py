"""A LangChain retriever over echo embeddings of the embedded SmolLM2-135M (no network needed).

    python examples/langchain_retriever.py
"""

from __future__ import annotations

from langchain_core.vectorstores import InMemoryVectorStore

from langchain_echo_embeddings import EchoEmbeddings

DOCUMENTS = [
    "Echo embeddings repeat the input so that every pooled token has read the whole text.",
    "Paris is the capital and largest city of France.",
    "A sourdough loaf needs flour, water, salt and a lively starter.",
    "The heart pumps blood through the arteries and veins.",
]

embeddings = EchoEmbeddings(model="smollm2-135m", strategy="echo")  # or strategy="prompteol+tp", "mean", ...
retriever = InMemoryVectorStore.from_texts(DOCUMENTS, embeddings).as_retriever(search_kwargs={"k": 2})
for query in ("What is the capital of France?", "How do I make bread?", "Why repeat the sentence?"):
    print(query)
    for document in retriever.invoke(query):
        print("   ", document.page_content)
