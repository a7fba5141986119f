"""One reader and one rule per file type: the same file reads the same through every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_embeddings import data
from echo_embeddings.data import DataError
from echo_embeddings.scale_out import _rows

# A quote inside a TSV field is an ordinary character (GLUE / STS-B files hold unbalanced ones).
TSV = 'sentence1\tsentence2\tscore\n"Quoted" start\tends with "\t4.0\nA plain one\tand "a tab-free, quoted" part\t1.5\n'
FIRST_COLUMN = ['"Quoted" start', "A plain one"]


@pytest.fixture
def tsv(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.tsv"
    path.write_text(TSV, encoding="utf-8")
    return path


def test_a_tsv_reads_the_same_through_embed_evaluate_train_and_ray(tsv: Path) -> None:
    embed = list(data.read_texts(str(tsv), "sentence1"))
    evaluate = [row[0] for row in data.read_table(tsv, ["sentence1", "sentence2"])]
    train = [row[0] for row in data.read_training_file(tsv).rows]
    ray = [text for _, text in _rows({"path": str(tsv), "start": 0, "end": -1, "line": 1}, "sentence1", None)]
    assert embed == evaluate == train == ray == FIRST_COLUMN
    assert data.read_training_file(tsv).rows[0] == ('"Quoted" start', 'ends with "', 4.0)


def test_a_csv_follows_rfc_4180_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "texts.csv"
    path.write_text('text,label\n"a, quoted ""text""",x\nplain,y\n', encoding="utf-8")
    expected = ['a, quoted "text"', "plain"]
    assert list(data.read_texts(str(path), "text")) == expected
    assert [r[0] for r in data.read_table(path, ["text", "label"])] == expected
    assert [t for _, t in _rows({"path": str(path), "start": 0, "end": -1, "line": 1}, "text", None)] == expected


def test_data_errors_name_the_file_and_the_column(tmp_path: Path, tsv: Path) -> None:
    with pytest.raises(DataError, match=r"pairs.tsv has no column 'text'; its columns are \['sentence1', 'sentence2', 'score'\]"):
        list(data.read_texts(str(tsv), "text"))
    with pytest.raises(DataError, match="no such file"):
        data.read_table(tmp_path / "missing.tsv", ["a"])
    assert issubclass(DataError, ValueError)
