"""The ASGI app (Starlette): OpenAI-compatible routes over the same library calls as the CLI.

Chat completions call :func:`offline.rag.answer` and ``/v1/search`` calls
:func:`offline.retrieval.search`, the functions behind ``offline ask`` and ``offline search``, so
access checks before ranking, grounding and their audit entries are the CLI's. Each request adds
one ``server.request`` entry (endpoint, status, client address, token id, time), denials, unknown
endpoints and methods included; a request whose token opens nothing, and a 429, are kept in the
server's memory (:mod:`offline.server.reports`) and signed by the next request with a valid token.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import AuthenticationFailed, OfflineError
from ..vault.session import Session
from . import api
from .pool import SessionPool

MAX_BODY = 1 << 20  # 1 MiB: a question, some messages, a batch of texts to embed
BODY_TIMEOUT_S = float(os.environ.get("OFFLINE_SERVER_BODY_TIMEOUT_S", "30"))


def _client(request: Request) -> str:
    c = request.client
    return f"{c.host}:{c.port}" if c else "-"


def _bearer(request: Request, endpoint: str = "") -> str:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        request.app.state.pool.report_failure("token:none", _client(request), endpoint)
        raise AuthenticationFailed("missing API token (Authorization: Bearer ofk_...)")
    return token.strip()


async def _body(request: Request) -> bytes | api.ApiError:
    """The body, or the 413 to answer (decided after the token is checked, so it is audited)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        return api.ApiError(413, f"request body over {MAX_BODY} bytes", code="request_too_large")
    data = bytearray()
    try:
        with anyio.fail_after(BODY_TIMEOUT_S):  # a client trickling its body (slowloris) is cut off
            async for piece in request.stream():
                data += piece
                if len(data) > MAX_BODY:
                    return api.ApiError(413, f"request body over {MAX_BODY} bytes", code="request_too_large")
    except TimeoutError:
        return api.ApiError(408, f"request body not received within {BODY_TIMEOUT_S:g} s", code="timeout")
    return bytes(data)


def _error(exc: BaseException) -> JSONResponse:
    status, kind, code = api.classify(exc)
    message = str(exc) if isinstance(exc, OfflineError) else "internal server error"
    return JSONResponse(api.error_body(message, kind, code), status_code=status)


async def _handle(
    request: Request, endpoint: str, work: Any, *, body: bool = True, lane: str = "retrieve"
) -> Any:
    """Authenticate, admit, run ``work(session, doc)`` in a worker thread, audit, answer."""
    pool: SessionPool = request.app.state.pool
    client = _client(request)
    t0 = time.perf_counter()
    try:
        token = _bearer(request, endpoint)
        raw = await _body(request) if body else b"{}"
        with pool.admit(token, client, endpoint):

            def job(session: Session, token_id: str) -> Any:
                status, extra = 200, {}
                try:
                    if isinstance(raw, api.ApiError):
                        raise raw
                    result, extra = work(session, api.parse_json(raw))
                    return result
                except Exception as exc:
                    status = api.classify(exc)[0]
                    raise
                finally:
                    session.audit(
                        "server.request",
                        severity="info" if status < 400 else "warning",
                        endpoint=endpoint,
                        status=status,
                        client=client,
                        token_id=token_id,
                        ms=round((time.perf_counter() - t0) * 1000, 1),
                        **extra,
                    )

            return await anyio.to_thread.run_sync(pool.run, token, client, job, lane, endpoint)
    except Exception as exc:  # every failure is an OpenAI-shaped JSON error; the server keeps serving
        return _error(exc)


# -- routes ---------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """For a service manager: up. Nothing else without a token (no backend address, no load);
    with a valid one (authenticated and audited like any request) also the queue and the backend."""
    if not request.headers.get("authorization"):
        return JSONResponse({"status": "ok"})
    backend = request.app.state.backend

    def work(session: Session, doc: dict[str, Any]):
        return {
            "status": "ok",
            **request.app.state.pool.stats(),
            "generate_backend": backend.url if backend else None,
        }, {}

    out = await _handle(request, "healthz", work, body=False)
    return out if isinstance(out, Response) else JSONResponse(out)


async def models(request: Request) -> Response:
    plain = request.app.state.plain_model

    def work(session: Session, doc: dict[str, Any]):
        from ..vault.collections import readable_collections

        names = [api.RAG_MODEL] + [f"{api.RAG_MODEL}:{c}" for c in readable_collections(session)] + [plain]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "offline"} for n in names]
        return {"object": "list", "data": data}, {}

    out = await _handle(request, "models", work, body=False)
    return out if isinstance(out, Response) else JSONResponse(out)


async def chat_completions(request: Request) -> Response:
    plain, backend = request.app.state.plain_model, request.app.state.backend

    def work(session: Session, doc: dict[str, Any]):
        from ..rag import answer

        req = api.chat_request(doc, plain)
        ans = answer(
            session,
            req["question"],
            collections=req["collections"],
            mode=req["mode"],
            max_tokens=req["max_tokens"],
            generate=backend,
        )
        return (req, ans), {
            "model": req["model"],
            "stream": req["stream"],
            "refused": ans.refused,
            **({"backend": backend.url} if backend else {}),
        }

    out = await _handle(request, "chat.completions", work, lane="generate")
    if isinstance(out, Response):
        return out
    req, ans = out
    if not req["stream"]:
        return JSONResponse(api.completion(req["model"], ans))

    async def events():
        # The answer passed its grounding check before the first byte, as `offline ask` prints it.
        for c in api.chunks(req["model"], ans):
            yield f"data: {json.dumps(c)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def search(request: Request) -> Response:
    def work(session: Session, doc: dict[str, Any]):
        from ..retrieval import search as run_search

        req = api.search_request(doc)
        result = run_search(session, req["query"], collections=req["collections"], k=req["k"])
        return {"object": "list", "data": [h.to_dict() for h in result.hits], "timings": result.timings}, {
            "hits": len(result.hits)
        }

    out = await _handle(request, "search", work)
    return out if isinstance(out, Response) else JSONResponse(out)


async def embeddings(request: Request) -> Response:
    def work(session: Session, doc: dict[str, Any]):
        from ..retrieval.embed import get_embedder
        from ..textsafe import check_text

        texts = [check_text(t, "the input") for t in api.embeddings_request(doc)]
        emb = get_embedder(None)
        vecs = emb.encode(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
            for i, v in enumerate(vecs)
        ]
        return {
            "object": "list",
            "data": data,
            "model": emb.name,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }, {"inputs": len(texts), "model": emb.name}

    out = await _handle(request, "embeddings", work)
    return out if isinstance(out, Response) else JSONResponse(out)


async def _unrouted(request: Request, status: int, message: str, code: str) -> Response:
    """404/405: with a token, through the same path as any request (authenticated, audited);
    without one, answered at once (nothing to sign with, nothing to count against anyone)."""
    error = api.ApiError(status, message, code=code)
    if not request.headers.get("authorization"):
        return _error(error)

    def work(session: Session, doc: dict[str, Any]):
        raise error

    # The path is the client's text, signed into the log: printable ASCII only, bounded.
    def printable(text: str) -> str:
        return "".join(c if " " < c < "\x7f" else "?" for c in text)

    where = f"{printable(request.method[:10])} {printable(request.url.path[:120])}"
    return await _handle(request, where, work, body=False)


async def not_found(request: Request, exc: Exception) -> Response:
    return await _unrouted(request, 404, "no such endpoint", "not_found")


async def not_allowed(request: Request, exc: Exception) -> Response:
    return await _unrouted(request, 405, "method not allowed", "method_not_allowed")


def create_app(
    vault_dir: Path,
    *,
    idle_s: float = 300.0,
    queue_size: int = 64,
    per_user: int = 8,
    generate_backend: str | None = None,
) -> Starlette:
    """The server app for ``vault_dir``; it holds no key until a request presents a token.

    ``generate_backend``: an OpenAI-compatible engine's URL for generation (see :mod:`.backend`);
    without it llama.cpp runs in this process.
    """
    from ..models.catalog import resolve_model
    from .backend import Backend

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/search", search, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
    )
    app.state.vault_dir = Path(vault_dir)
    app.state.pool = SessionPool(vault_dir, idle_s=idle_s, queue_size=queue_size, per_user=per_user)
    app.state.plain_model = resolve_model(None, "generate", check=False).name
    app.state.backend = Backend(generate_backend) if generate_backend else None
    return app
