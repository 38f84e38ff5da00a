"""What the server accepts, in OpenAI's shapes: completions and chat requests, and the error body.

Types are strict (``"16"`` is not 16) and unknown fields are refused by name. Sampling fields
specctl does not implement are accepted at their default values, which is what OpenAI clients
and tools send when nobody set them, and refused with a 400 naming them otherwise: a tool that
sends ``presence_penalty: 0`` works, and one that relies on a penalty learns it has none.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

_STRICT = ConfigDict(extra="forbid", strict=True)


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status,
                            headers=self.headers)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def overloaded(message: str = "too many requests in flight; retry later") -> APIError:
    return APIError(429, message, "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})


def unavailable(message: str) -> APIError:
    return APIError(503, message, "server_error", code="service_unavailable")


class Speculation(BaseModel):
    """specctl's per-request speculation control: ``{"max_k": 2}`` or ``{"enabled": false}``."""

    model_config = _STRICT
    enabled: bool = True
    max_k: int | None = Field(None, ge=0, description="cap on draft tokens per round (0: plain decoding)")

    @property
    def cap(self) -> int | None:
        return 0 if not self.enabled else self.max_k


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields common to completions and chat."""

    model_config = _STRICT
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=16)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # extensions: specctl's, and vLLM's ignore_eos
    origin: str | None = Field(None, description="the site the request comes from (an edge device)")
    slo_class: str | None = Field(None, description="which of the scenario's SLO classes applies")
    speculation: Speculation | None = None
    ignore_eos: bool = False

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: str | list[int] = Field(description="text, or a list of token ids")
    best_of: int | None = None
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    # ``extra="ignore"``: a message the API returned (with refusal=None, tool_calls=None...) may be sent back as is
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=5)
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: Any = None


#: Fields accepted only at these values (or null): specctl does not implement the others.
DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "top_p": (1,), "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "best_of": (1,),
    "echo": (False,), "suffix": ("",), "tools": ([],), "tool_choice": ("none",), "response_format": ({"type": "text"},),
    "functions": ([],), "function_call": ("none",),
}


def check_supported(body: _Sampling) -> None:
    """Refuse non-default values of fields specctl does not implement, naming every one."""
    bad = {name: value for name in DEFAULT_ONLY if name in type(body).model_fields
           and (value := getattr(body, name)) is not None and value not in DEFAULT_ONLY[name]}
    if isinstance(body, CompletionRequest) and body.best_of == (body.n or 1):
        bad.pop("best_of", None)  # best_of == n asks for nothing extra
    if bad:
        given = ", ".join(f"{k}={v!r}" for k, v in bad.items())
        defaults = ", ".join(f"{k}={DEFAULT_ONLY[k][0]!r}" for k in bad)
        raise APIError(400, f"unsupported value(s): {given}; specctl implements only the default(s) ({defaults}): "
                            f"send those or leave the field(s) out", param=next(iter(bad)), code="unsupported_value")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")
    if len(body.stops) > 4 or any(not s for s in body.stops):
        raise APIError(400, "stop takes up to 4 non-empty strings", param="stop")


def parse(model: type[_Sampling], raw: Any) -> Any:
    """Validate a decoded JSON body; a 400 naming the field and the problem if it does not fit."""
    if not isinstance(raw, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        body = model.model_validate(raw)
    except ValidationError as e:
        raise _validation_error(e) from None
    check_supported(body)
    return body


def _validation_error(e: ValidationError) -> APIError:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()) if not _union_tag(str(x)))
    if err["type"] == "extra_forbidden":
        return APIError(400, f"unknown or unsupported field {loc!r}", param=loc)
    if err["type"] == "missing":
        return APIError(400, f"missing required field {loc!r}", param=loc)
    if loc.startswith("prompt"):
        return APIError(400, "prompt must be a string or a list of token ids (one prompt per request)", param="prompt")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return APIError(400, f"{loc}: {err['msg']}{shown}", param=loc.split(".")[0] or None)


def _union_tag(part: str) -> bool:
    """pydantic names the member of a union that failed (``str``, ``list[int]``...): not a field."""
    return part in ("str", "int", "float", "bool") or part.startswith(("list[", "dict[", "function-")) or part[:1].isupper()
