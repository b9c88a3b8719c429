"""The HTTP side of the server: a fixed table of in-memory static files, nothing else.

The files of ``asr/serve/static`` are read once at start-up into a table keyed by URL path.
A request path is only ever looked up in that table (after dropping its query string): it never
reaches the file system, so there is no path traversal to defend against.
"""

from __future__ import annotations

import email.utils
import http
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

__all__ = ["StaticSite", "StaticFile", "load_static_site"]

#: URL path -> (file in asr/serve/static, content type).
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/recorder-worklet.js": ("recorder-worklet.js", "text/javascript; charset=utf-8"),
}

_SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'",
    ),
)


@dataclass(frozen=True)
class StaticFile:
    """One servable file: its bytes and content type."""

    body: bytes
    content_type: str


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            *_SECURITY_HEADERS,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


@dataclass(frozen=True)
class StaticSite:
    """The static files plus a JSON status document.

    Attributes:
        files: URL path -> file.
        stats: returns the JSON-serializable document served at ``/stats``.
    """

    files: Mapping[str, StaticFile]
    stats: Callable[[], dict] | None = None

    def respond(self, request: Request) -> Response:
        """The HTTP response for a (non-websocket) request."""
        path = urlsplit(request.path).path
        if path == "/stats" and self.stats is not None:
            body = json.dumps(self.stats(), sort_keys=True).encode()
            return _response(http.HTTPStatus.OK, body, "application/json")
        found = self.files.get(path)
        if found is None:
            return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        return _response(http.HTTPStatus.OK, found.body, found.content_type)


def load_static_site(stats: Callable[[], dict] | None = None) -> StaticSite:
    """Reads the packaged static files.

    Raises:
        FileNotFoundError: naming a static file missing from the installation.
    """
    root = resources.files("asr.serve") / "static"
    files = {}
    for url, (name, content_type) in STATIC_FILES.items():
        entry = root / name
        if not entry.is_file():
            raise FileNotFoundError(f"static file {name} is missing from {root}")
        files[url] = StaticFile(entry.read_bytes(), content_type)
    return StaticSite(files, stats)
