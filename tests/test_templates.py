"""Templates parse as written, and for every preset and tokenizer the pooled ids are exactly the intended span."""

from __future__ import annotations

import pytest

from echo_embeddings import PRESETS, Preset, Template, get_preset, register_preset
from echo_embeddings.engine.layout import PieceTokenizer

TEXTS = ["A man is playing a guitar.", 'Braces {x} and "quotes" stay literal.', "Rewrite the following sentence: </s> <s>"]


def test_parse_marks_and_defaults() -> None:
    echo = Template.parse("Rewrite: {x}\nAgain: {x*}")
    assert [p.kind for p in echo.pieces] == ["text", "input", "text", "input"]
    assert [p.pooled for p in echo.pieces] == [False, False, False, True]
    assert echo.copies == 2
    # With no star, mean pools the last {x}; last pools the last piece.
    assert Template.parse("A {x} B {x}", "mean").pieces[3].pooled
    last = Template.parse('Say "{x}" in one word:"', "last")
    assert [p.pooled for p in last.pieces] == [False, False, True]
    assert Template.parse("{{literal}} {x}").pieces[0].text == "{literal} "


@pytest.mark.parametrize(
    ("spec", "message"),
    [("no input here", "no {x}"), ("{y}", "Unknown field"), ("{x} }", "Unbalanced"), ("{tp}{tp}{x}", "more than one")],
)
def test_parse_errors_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Template.parse(spec)


def test_bad_pooling_and_unknown_preset() -> None:
    with pytest.raises(ValueError, match="pooling"):
        Template.parse("{x}", "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown strategy 'nope'"):
        get_preset("nope")


def test_registry_refuses_silent_overwrite() -> None:
    preset = Preset("echo", (Template.parse("{x}"),))
    with pytest.raises(ValueError, match="already exists"):
        register_preset(preset)


def test_render_is_human_readable() -> None:
    assert PRESETS["echo"].sentence[0].render("hi") == "Rewrite the following sentence: hi\nThe rewritten sentence: hi"
    query = PRESETS["echo"].templates("query")[0].render("q?", "Find it")
    assert query == "Instruct: Find it\nQuery: q?\nQuery again: q?"


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("task", [None, "query", "document"])
def test_pooled_tokens_decode_to_the_intended_span(name: str, task: str | None, tokenizer) -> None:
    pieces = PieceTokenizer(tokenizer)
    for template in PRESETS[name].templates(task):
        _check_spans(template, pieces, tokenizer)


def _check_spans(template: Template, pieces: PieceTokenizer, tokenizer) -> None:
    layout = pieces.layout(template, "Retrieve passages", placeholder=False)
    for text in TEXTS:
        (text_ids,) = pieces.encode_inputs([text], layout.lead)
        ids, pooled, _ = layout.build(text_ids)
        # The input appears once per copy, with identical ids in every copy.
        assert sum(ids[i : i + len(text_ids)] == text_ids for i in range(len(ids))) == template.copies
        pooled_ids = [ids[i] for i in pooled]
        assert pooled == list(range(pooled[0], pooled[-1] + 1)), "the pooled span is contiguous"
        expected = _expected_span(template, pieces, text_ids, tokenizer)
        assert (pooled_ids[-1:] if template.pooling == "last" else pooled_ids) == expected
        # And the whole sequence reads as the rendered template (modulo the tokenizer's own BOS).
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        rendered = template.render(text, "Retrieve passages").replace("<eos>", tokenizer.eos_token or "").replace("<tp>", "")
        assert decoded.removeprefix(tokenizer.bos_token or "").strip() == rendered.strip()


def _expected_span(template: Template, pieces: PieceTokenizer, text_ids: list[int], tokenizer) -> list[int]:
    if template.pooling == "last":
        last_piece = [p for p in template.pieces if p.pooled][-1]
        if last_piece.kind == "eos":
            return [tokenizer.eos_token_id]
        if last_piece.kind == "input":
            return text_ids[-1:]
        return list(pieces.encode(last_piece.text)[-1:])
    expected = list(text_ids)
    if template.pieces[-1].kind == "eos":
        expected.append(tokenizer.eos_token_id)
    return expected


def test_mean_echo_pools_exactly_the_second_copy(tokenizer) -> None:
    pieces = PieceTokenizer(tokenizer)
    layout = pieces.layout(PRESETS["echo"].sentence[0])
    text = "Dogs run in the park."
    ids, pooled, _ = layout.build(pieces.encode_inputs([text], layout.lead)[0])
    assert tokenizer.decode([ids[i] for i in pooled]).strip() == text
    assert pooled[-1] == len(ids) - 1 - len(pieces.suffix)
    assert tokenizer.decode(ids[: pooled[0]]).rstrip().endswith("The rewritten sentence:")


def test_empty_text_pools_the_token_before_the_span(tokenizer) -> None:
    pieces = PieceTokenizer(tokenizer)
    layout = pieces.layout(PRESETS["echo"].sentence[0])
    ids, pooled, _ = layout.build(pieces.encode_inputs([""], layout.lead)[0])
    assert len(pooled) == 1 and tokenizer.decode([ids[pooled[0]]]).strip() == ":"


def test_placeholder_is_one_existing_token(tokenizer) -> None:
    pieces = PieceTokenizer(tokenizer)
    layout = pieces.layout(Template.parse('This sentence : "{tp}{x}" means in one word:"', "last"))
    ids, _, placeholder = layout.build(pieces.encode("hi"))
    assert placeholder is not None and ids[placeholder] == pieces.placeholder_id < len(tokenizer)
    assert PieceTokenizer(tokenizer, placeholder_token="A").placeholder_id == tokenizer.convert_tokens_to_ids("A")
    with pytest.raises(ValueError, match="exactly one"):
        PieceTokenizer(tokenizer, placeholder_token="a long phrase of many tokens")
