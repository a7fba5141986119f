"""Quickstart: echo vs classical mean embeddings on the embedded SmolLM2-135M, then a small search.

    python examples/quickstart.py [--model smollm2-135m]

The sentence pairs share their opening words but differ in meaning at the end (or the
reverse): a causal model's early tokens cannot see the end, so classical mean pooling is
pulled toward the shared opening; echo pools a second copy whose tokens have read it all.
"""

from __future__ import annotations

import argparse

import echo_embeddings

PAIRS = [
    ("She loves summer, but she dislikes the heat.", "She loves summer for the warm evenings.", "differ"),
    ("The bank was steep and muddy near the river.", "The bank raised its interest rates again.", "differ"),
    ("He left the meeting because he was sick.", "Feeling unwell, he walked out of the meeting.", "same"),
    ("A man is playing a guitar.", "Someone plays an instrument.", "same"),
    ("I would not call this movie good.", "I would call this movie good.", "differ"),
]
DOCUMENTS = [
    "Echo embeddings repeat the input so that every pooled token has read the whole text.",
    "Token prepending copies the last token's state into a placeholder at the start of the sentence.",
    "Paris is the capital and largest city of France.",
    "A good sourdough needs flour, water, salt and a lively starter.",
]
QUERY = "How do echo embeddings work?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=echo_embeddings.DEFAULT_MODEL, help="alias, Hugging Face id, folder or .gguf")
    args = parser.parse_args()

    model = echo_embeddings.load(args.model, strategy="echo")
    print(model[0])
    scores = {}
    for strategy in ("mean", "echo"):
        model[0].strategy = strategy  # same weights, another strategy
        left = model.encode([a for a, _, _ in PAIRS], normalize_embeddings=True, convert_to_tensor=True)
        right = model.encode([b for _, b, _ in PAIRS], normalize_embeddings=True, convert_to_tensor=True)
        scores[strategy] = (left * right).sum(dim=1).tolist()

    print(f"\nCosine similarity of sentence pairs ({args.model})\n")
    print(f"{'meaning':8} {'mean':>6} {'echo':>6} {'echo-mean':>9}  pair")
    for i, (a, b, label) in enumerate(PAIRS):
        m, e = scores["mean"][i], scores["echo"][i]
        print(f"{label:8} {m:6.3f} {e:6.3f} {e - m:+9.3f}  {a!r} / {b!r}")
    for label, words in (("differ", "that differ in meaning"), ("same", "with the same meaning")):
        deltas = [scores["echo"][i] - scores["mean"][i] for i, pair in enumerate(PAIRS) if pair[2] == label]
        print(f"echo - mean, averaged over the pairs {words}: {sum(deltas) / len(deltas):+.3f}")

    query = model.encode_query([QUERY], convert_to_tensor=True)
    documents = model.encode_document(DOCUMENTS, convert_to_tensor=True)
    ranking = model.similarity(query, documents)[0].argsort(descending=True).tolist()
    print(f"\nQuery: {QUERY}")
    for rank, index in enumerate(ranking, 1):
        print(f"  {rank}. {DOCUMENTS[index]}")


if __name__ == "__main__":
    main()
