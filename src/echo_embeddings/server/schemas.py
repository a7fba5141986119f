"""The request and response bodies of ``/v1/embeddings``, following OpenAI's embeddings API, and the
checks a request passes before any model work (each error names the item and the limit)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

KNOWN_FIELDS = {"input", "model", "encoding_format", "dimensions", "user", "input_type"}
MODEL_SUFFIXES = {":query": "query", ":document": "document"}
"""For clients that cannot send ``input_type``: ``model="NAME:query"`` embeds with the query template."""


class RequestError(ValueError):
    """A request the server refuses: HTTP ``status``, OpenAI's error ``type``, the ``param`` at fault."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


class EmbeddingRequest(BaseModel):
    """What a client sends; validated by :func:`parse_request`, which reports errors by item."""

    model_config = ConfigDict(extra="allow")

    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    input_type: Literal["query", "document"] | None = None


def parse_request(body: Any, *, max_inputs: int, max_input_chars: int) -> tuple[EmbeddingRequest, list[str]]:
    """The request and its texts, or a :class:`RequestError` that names the field or item at fault."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object with an 'input' field")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; this server takes {sorted(KNOWN_FIELDS)}", param=unknown[0])
    if "input" not in body:
        raise RequestError("'input' is required: a string or a list of strings", param="input")
    texts = _texts(body["input"], max_inputs=max_inputs, max_input_chars=max_input_chars)
    try:
        request = EmbeddingRequest(**body)
    except Exception as error:  # pydantic's message names the field
        field = next((str(e["loc"][0]) for e in getattr(error, "errors", lambda: [])() if e.get("loc")), None)
        raise RequestError(f"invalid field {field!r}: {_first_error(error)}", param=field) from None
    if request.dimensions is not None and request.dimensions < 1:
        raise RequestError(f"'dimensions' must be a positive integer, got {request.dimensions}", param="dimensions")
    return request, texts


def _first_error(error: Exception) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors) and errors():
        return str(errors()[0].get("msg", error))
    return str(error)


def _texts(value: Any, *, max_inputs: int, max_input_chars: int) -> list[str]:
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise RequestError(f"'input' must be a string or a list of strings, got {type(value).__name__}", param="input")
    if not items:
        raise RequestError("'input' is an empty list; send at least one string", param="input")
    if all(isinstance(i, int) and not isinstance(i, bool) for i in items) or any(isinstance(i, list) for i in items):
        raise RequestError(
            "token-id arrays are not supported: echo lays each text into its template by the model's own tokenizer, so send the text itself",
            param="input",
        )
    if len(items) > max_inputs:
        raise RequestError(f"'input' has {len(items)} items; at most {max_inputs} a request", param="input")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise RequestError(f"input[{i}] is {type(item).__name__}; every item must be a string", param=f"input[{i}]")
        if not item:
            raise RequestError(f"input[{i}] is an empty string; every item needs text", param=f"input[{i}]")
        if len(item) > max_input_chars:
            raise RequestError(f"input[{i}] has {len(item)} characters; at most {max_input_chars} an item", param=f"input[{i}]")
    return items
