"""Ray Data scale-out on a local Ray (one cluster for the whole test session): the same vectors as
one process, ids intact, bounded memory on 10^5 texts, clear errors, and Ray kept optional."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest

import echo_embeddings
from helpers import save_dense_model, save_tiny_model

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'echo-embeddings[ray]'")
from echo_embeddings import cli  # noqa: E402
from echo_embeddings.scale_out import BadRowError, EchoEmbedBatches, embed_corpus, read_corpus  # noqa: E402

TEXTS = ["A man is playing a guitar.", "", "Someone plays an instrument on the stage.", "Dogs run.", 'Braces {x} and "quotes".']


@pytest.fixture(scope="session")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def read_vectors(folder) -> dict[str, np.ndarray]:
    table = pq.read_table(folder)
    return {row_id: np.asarray(vector, dtype=np.float32) for row_id, vector in zip(table["id"].to_pylist(), table["embedding"].to_pylist())}


def test_the_callable_class_returns_the_single_process_vectors(local_ray, tiny_folder) -> None:
    rows = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(TEXTS * 7)]
    ds = ray.data.from_items(rows, override_num_blocks=4).map_batches(
        EchoEmbedBatches,
        fn_constructor_kwargs={"model": tiny_folder, "strategy": "echo", "task": "document", "device": "cpu"},
        compute=ray.data.ActorPoolStrategy(size=2),
        batch_size=8,
    )
    out = {row["id"]: row for row in ds.take_all()}
    assert sorted(out) == sorted(r["id"] for r in rows)  # every id once, whatever the order
    expected = echo_embeddings.load(tiny_folder, "echo", device="cpu").encode_document([r["text"] for r in rows])
    for i, row in enumerate(rows):
        assert out[row["id"]]["text"] == row["text"]
        assert out[row["id"]]["embedding"].dtype == np.float32
        assert np.abs(out[row["id"]]["embedding"] - expected[i]).max() <= 1e-5


def test_corpus_files_to_parquet_with_ids(local_ray, tiny_folder, tmp_path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("\n".join(TEXTS[:3]) + "\n", encoding="utf-8")
    (corpus / "sub" / "b.jsonl").write_text("\n".join(json.dumps({"id": f"j{i}", "text": t}) for i, t in enumerate(TEXTS)) + "\n", encoding="utf-8")
    (corpus / "c.tsv").write_text("text\tlabel\n" + "".join(f"{t}\tx\n" for t in TEXTS[3:]), encoding="utf-8")
    out = tmp_path / "vectors"
    assert embed_corpus([corpus], out, actors=2, model=tiny_folder, strategy="echo", device="cpu", normalize=True, batch_size=4) == 10
    vectors = read_vectors(out)
    model = echo_embeddings.load(tiny_folder, "echo", device="cpu")
    expected = dict(zip(
        ["a.txt:1", "a.txt:2", "a.txt:3", *(f"b.jsonl:{i}" for i in range(1, 6)), "c.tsv:1", "c.tsv:2"],
        model.encode(TEXTS[:3] + TEXTS + TEXTS[3:], normalize_embeddings=True),
    ))
    assert set(vectors) == set(expected)
    assert max(np.abs(vectors[k] - expected[k]).max() for k in expected) <= 1e-5
    assert "text" not in pq.read_table(out).column_names


def test_cli_embed_on_ray_with_a_saved_model(local_ray, tmp_path) -> None:
    """A saved model's whole module list (Dense 32 -> 8, Normalize) runs on the actors too."""
    folder = str(save_dense_model(tmp_path))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"doc": f"d{i}", "body": t}) for i, t in enumerate(TEXTS)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["embed", str(corpus), "--ray", "--actors", "2", "--model", folder, "--column", "body", "--id-column", "doc", "--keep-text", "--out", str(out)]
    assert cli.main(argv) == 0
    table = pq.read_table(out)
    assert set(table.column_names) >= {"id", "text", "embedding"}
    vectors = read_vectors(out)
    expected = echo_embeddings.load(folder, device="cpu").encode(TEXTS)
    assert expected.shape == (5, 8)
    assert max(np.abs(vectors[f"d{i}"] - expected[i]).max() for i in range(5)) <= 1e-5


def test_bad_rows_name_their_id(local_ray, tiny_folder, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "ok", "text": "fine"}\n{"id": "n7", "text": 7}\n', encoding="utf-8")
    with pytest.raises(Exception, match="row id 'n7': 'text' is int"):
        embed_corpus([bad], tmp_path / "o1", model=tiny_folder, strategy="echo", device="cpu", id_column="id")
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"id": "m1", "body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(Exception, match="row id 'm1' \\(missing.jsonl:1\\) has no 'text' field"):
        embed_corpus([missing], tmp_path / "o2", model=tiny_folder, strategy="echo", device="cpu", id_column="id")
    actor = EchoEmbedBatches(tiny_folder, "echo", device="cpu")
    with pytest.raises(BadRowError, match="no 'text' column \\(first row id 'x'\\)"):
        actor({"id": np.array(["x"], dtype=object), "body": np.array(["t"], dtype=object)})
    assert cli.main(["embed", str(tmp_path / "nowhere"), "--ray", "--model", tiny_folder, "--out", str(tmp_path / "o3")]) == 2


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_a_hundred_thousand_texts_stream_with_bounded_memory(local_ray, tiny_folder, tmp_path) -> None:
    corpus = tmp_path / "big.txt"
    with corpus.open("w", encoding="utf-8") as f:
        for i in range(100_000):
            f.write(f"Short text number {i} about {'dogs' if i % 3 else 'a walk in the park'}.\n")
    peak = [rss_mib()]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak.append(rss_mib())
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = embed_corpus([corpus], tmp_path / "big", actors=2, model=tiny_folder, strategy="echo", device="cpu")
    finally:
        done.set()
        watcher.join()
    assert rows == 100_000
    # One file, two actors: reading is not fused into the actors, so both get rows.
    assert not [w for w in caught if "fully utilize" in str(w.message)], [str(w.message) for w in caught]
    ids = pq.read_table(tmp_path / "big", columns=["id"])["id"].to_pylist()
    assert len(set(ids)) == 100_000 and "big.txt:1" in ids and "big.txt:100000" in ids
    # The driver never holds the corpus or its vectors: it streams (100k x 32 floats alone is 12 MiB,
    # the texts as Python objects over 10 MiB; the bound leaves room for Ray's own bookkeeping).
    assert max(peak) - peak[0] < 300, f"driver memory grew by {max(peak) - peak[0]:.0f} MiB"


def test_the_core_imports_and_runs_without_ray() -> None:
    code = "import sys, echo_embeddings, echo_embeddings.cli; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_line_aligned_splits_cover_a_file_exactly(tmp_path) -> None:
    from echo_embeddings.scale_out import _rows, _splits

    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"row {i} " + "é" * (i % 50)}) for i in range(60_000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = _splits(path, 5)
    assert len(splits) > 1 and splits[0]["start"] == 0 and splits[-1]["end"] == path.stat().st_size
    rows = [row for split in splits for row in _rows(split, "text", None)]
    assert [row_id for row_id, _ in rows] == [f"big.jsonl:{i}" for i in range(1, 60_001)]
    assert [text for _, text in rows] == [json.loads(line)["text"] for line in lines]


def test_read_corpus_rejects_unknown_files(tmp_path) -> None:
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown file type"):
        read_corpus([tmp_path / "notes.md"])
    with pytest.raises(FileNotFoundError, match="holds no"):
        (tmp_path / "empty").mkdir()
        read_corpus([tmp_path / "empty"])


def test_a_used_output_folder_is_refused_unless_overwritten(local_ray, tiny_folder, tmp_path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("one text\nanother text\n", encoding="utf-8")
    out = tmp_path / "vectors"
    assert embed_corpus([corpus], out, model=tiny_folder, strategy="echo", device="cpu") == 2
    with pytest.raises(FileExistsError, match="already holds files"):
        embed_corpus([corpus], out, model=tiny_folder, strategy="echo", device="cpu")
    assert cli.main(["embed", str(corpus), "--ray", "--model", tiny_folder, "--out", str(out)]) == 2
    # Overwriting replaces the folder's files: the count and the folder hold this run's rows only.
    assert embed_corpus([corpus], out, model=tiny_folder, strategy="echo", device="cpu", overwrite=True) == 2
    assert pq.read_table(out).num_rows == 2
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    with pytest.raises(FileExistsError, match="is a file"):
        embed_corpus([corpus], tmp_path / "a_file", model=tiny_folder, strategy="echo", device="cpu")
    (tmp_path / "empty").mkdir()
    assert embed_corpus([corpus], tmp_path / "empty", model=tiny_folder, strategy="echo", device="cpu") == 2
    # A corpus without rows writes nothing and says so.
    (tmp_path / "blank.txt").write_text("", encoding="utf-8")
    assert embed_corpus([tmp_path / "blank.txt"], tmp_path / "none", model=tiny_folder, strategy="echo", device="cpu") == 0


def test_batches_truncate_and_quantize_with_one_scale(tiny_folder: str) -> None:
    texts = ["A man is playing a guitar.", "Dogs run in the park.", "Stocks fell sharply.", "Rain again."]
    model = echo_embeddings.load(tiny_folder, "echo", device="cpu")
    full = model.encode(texts, truncate_dim=8, normalize_embeddings=True)
    ranges = echo_embeddings.calibration_ranges(full)
    embed = EchoEmbedBatches(tiny_folder, "echo", truncate_dim=8, normalize=True, precision="int8", precision_ranges=ranges, device="cpu")
    halves = [embed({"text": np.array(texts[i : i + 2], dtype=object)})["embedding"] for i in (0, 2)]
    together = embed({"text": np.array(texts, dtype=object)})["embedding"]
    assert together.dtype == np.int8 and together.shape == (4, 8)
    assert (np.vstack(halves) == together).all()  # a batch does not calibrate its own scale
    with pytest.raises(ValueError, match="needs ranges"):
        EchoEmbedBatches(tiny_folder, precision="uint8")
