"""The OpenAI wire format: reading requests, shaping responses and errors. No vault access here."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..errors import (
    AccessDenied,
    AuthenticationFailed,
    IntegrityError,
    InvalidInput,
    NotFound,
    OfflineError,
    UsageError,
)

RAG_MODEL = "offline-rag"
MAX_INPUTS = 256


class ApiError(OfflineError):
    """A request the server refuses with a given HTTP status (and OpenAI error type)."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code


def error_body(message: str, kind: str, code: str | None) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def classify(exc: BaseException) -> tuple[int, str, str | None]:
    """HTTP status, OpenAI error type and code for a library error (the kit's meaning, HTTP's number)."""
    from .backend import BackendError
    from .pool import Busy

    if isinstance(exc, BackendError):
        return 502, "server_error", "backend_error"
    if isinstance(exc, ApiError):
        return exc.status, exc.kind, exc.code
    if isinstance(exc, Busy):
        return 429, "rate_limit_error", "busy"
    if isinstance(exc, AuthenticationFailed):
        return 401, "authentication_error", "invalid_api_key"
    if isinstance(exc, AccessDenied):
        return 403, "permission_error", "access_denied"
    if isinstance(exc, NotFound):
        return 404, "invalid_request_error", "not_found"
    if isinstance(exc, (UsageError, InvalidInput)):
        return 400, "invalid_request_error", "invalid_value"
    if isinstance(exc, IntegrityError):
        return 500, "server_error", "vault_integrity"  # fail closed: tampering stops the answer
    return 500, "server_error", None


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or 400."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "request body is not valid JSON") from None
    except RecursionError:  # '[[[[...': nested deeper than the parser's stack allows
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body must be a JSON object")
    return doc


def _int(doc: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = doc.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ApiError(400, f"{key} must be an integer from {lo} to {hi}")
    return v


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones count
        return "\n".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    raise ApiError(400, "message content must be a string or a list of text parts")


def chat_request(doc: dict[str, Any], plain_model: str) -> dict[str, Any]:
    """Model, question and options of a chat completion request.

    The question is the last user message. The client's system messages and earlier turns are not
    passed to the model: the kit's own prompt frames the sources, and an instruction in a message
    is just more question text, neutralised like any other (see offline.llm.prompts).
    """
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required")
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a non-empty list of objects")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise ApiError(400, "messages hold no user message")
    question = _text(users[-1].get("content"))
    max_tokens = _int(doc, "max_completion_tokens", _int(doc, "max_tokens", 256, 1, 8192), 1, 8192)
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false")
    if model == plain_model:
        mode, collections = "base", None
    elif model == RAG_MODEL:
        mode, collections = "rag", None
    elif model.startswith(RAG_MODEL + ":"):
        mode, collections = "rag", [c for c in model[len(RAG_MODEL) + 1 :].split("+")]
        if not all(collections):
            raise ApiError(400, f"model {model[:80]!r}: empty collection name")
    else:
        raise ApiError(
            404, f"model {model[:80]!r} does not exist (GET /v1/models lists yours)", code="model_not_found"
        )
    return {
        "model": model,
        "mode": mode,
        "collections": collections,
        "question": question,
        "max_tokens": max_tokens,
        "stream": stream,
    }


def search_request(doc: dict[str, Any]) -> dict[str, Any]:
    query = doc.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ApiError(400, "query is required")
    colls = doc.get("collections")
    if colls is not None and (
        not isinstance(colls, list) or not all(isinstance(c, str) and c for c in colls)
    ):
        raise ApiError(400, "collections must be a list of names")
    return {"query": query, "collections": colls or None, "k": _int(doc, "k", 5, 1, 100)}


def embeddings_request(doc: dict[str, Any]) -> list[str]:
    inp = doc.get("input")
    texts = [inp] if isinstance(inp, str) else inp
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "input must be a string or a list of strings")
    if len(texts) > MAX_INPUTS:
        raise ApiError(413, f"at most {MAX_INPUTS} inputs per request", code="too_many_inputs")
    return texts


def answer_text(ans: Any) -> str:
    """What the assistant message says: the checked answer, then the numbered sources it cites."""
    text = ans.answer
    if not ans.refused and ans.sources:
        text += "\n\n" + ans.source_list()
    return text


def completion(model: str, ans: Any) -> dict[str, Any]:
    """A ``chat.completion`` object; the kit's citations and grounding ride along under ``offline``."""
    tokens = int((ans.timings or {}).get("tokens") or 0)
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer_text(ans)},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
        "offline": extras(ans),
    }


def extras(ans: Any) -> dict[str, Any]:
    d = ans.to_dict()
    return {
        k: d.get(k)
        for k in (
            "refused",
            "refusal_reason",
            "sources",
            "citations",
            "support",
            "unsupported",
            "retrieved",
            "flagged",
        )
    }


def chunks(model: str, ans: Any, piece_chars: int = 64) -> list[dict[str, Any]]:
    """The same answer as ``chat.completion.chunk`` objects (role, content pieces, finish)."""
    cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **more,
        }

    text = answer_text(ans)
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": text[i : i + piece_chars]}) for i in range(0, len(text), piece_chars)]
    out.append(chunk({}, "stop", offline=extras(ans)))
    return out
