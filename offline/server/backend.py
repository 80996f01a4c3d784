"""``serve --generate-backend URL``: generation on an existing OpenAI-compatible engine.

The kit keeps retrieval, access control, the prompt's safety checks, grounding and audit; the
backend (llama.cpp's ``llama-server``, ``python -m llama_cpp.server``, vLLM) gets only the final
prompt messages, which hold the question and the retrieved passages, nothing more. The network
guard lets this process reach exactly that address (:func:`offline.netguard.allow_peer`); the
URL must name an IP address, so no name is ever looked up. Plain ``http.client``: no new
dependency, and every connection goes through the guarded socket.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .. import netguard
from ..errors import OfflineError, ParameterError
from ..llm.engine import DEFAULT_SAMPLING, Generation


class BackendError(OfflineError):
    """The generation backend failed or answered nonsense (HTTP 502)."""


class Backend:
    """One OpenAI-compatible chat completions endpoint, allow-listed in the network guard."""

    def __init__(self, url: str, *, model: str | None = None, timeout_s: float = 300.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ParameterError(
                "invalid {generate_backend} {url}: use http://IP:PORT (or https)",
                "generate_backend",
                url=repr(url),
            )
        try:
            ipaddress.ip_address(parts.hostname)
        except ValueError:
            raise ParameterError(
                "invalid {generate_backend} {url}: the host must be an IP address",
                "generate_backend",
                url=repr(url),
            ) from None
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.host, self.port, self.tls = parts.hostname, parts.port, parts.scheme == "https"
        self.base_path = parts.path.rstrip("/") or ""
        if not self.base_path.endswith("/v1"):
            self.base_path += "/v1"
        self.model, self.timeout_s = model, timeout_s
        netguard.allow_peer(self.host, self.port)

    def __call__(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        on_token: Callable[[str], None] | None = None,
    ) -> Generation:
        """One chat completion (what :func:`offline.rag.answer` calls instead of the local engine)."""
        body = {
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": False,
            **{k: DEFAULT_SAMPLING[k] for k in ("temperature", "top_p") if k in DEFAULT_SAMPLING},
        }
        if self.model:
            body["model"] = self.model
        t0 = time.perf_counter()
        doc = self._post("/chat/completions", body)
        total = time.perf_counter() - t0
        try:
            choice = doc["choices"][0]
            text = str(choice["message"]["content"] or "")
            usage = doc.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise BackendError("generation backend: malformed chat completion") from None
        if on_token is not None and text:
            on_token(text)
        return Generation(
            text=text,
            tokens=int(usage.get("completion_tokens") or 0),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            ttft_s=total,
            decode_s=0.0,
            total_s=total,
            finish_reason=choice.get("finish_reason"),
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        cls = http.client.HTTPSConnection if self.tls else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request(
                "POST",
                self.base_path + path,
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            raw = resp.read(16 << 20)
        except (OSError, http.client.HTTPException) as exc:
            raise BackendError(
                f"generation backend {self.url} unreachable ({exc.__class__.__name__})"
            ) from None
        finally:
            conn.close()
        if resp.status != 200:
            raise BackendError(f"generation backend {self.url} answered HTTP {resp.status}")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise BackendError("generation backend: not JSON") from None
        if not isinstance(doc, dict):
            raise BackendError("generation backend: not a JSON object")
        return doc
