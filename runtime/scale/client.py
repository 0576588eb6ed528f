"""A small client for ``clap-edge serve`` (standard library only: urllib + json).

>>> client = Client("http://127.0.0.1:8000")                       # doctest: +SKIP
>>> client.classify("cat.jpg", top_k=3)
{'labels': ['cat', 'dog', 'boat'], 'scores': [0.91, 0.05, 0.01]}
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO

from clap_edge.core.errors import ClapEdgeError, ImageError

__all__ = ["Client", "ServeError"]


class ServeError(ClapEdgeError):
    """The server answered an error other than an undecodable image (names the status and its message)."""


class Client:
    """``classify(path_or_bytes, top_k, embedding)`` against a running server; 422 raises :class:`ImageError`."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def classify(self, image: str | os.PathLike | bytes | BinaryIO, top_k: int = 5, embedding: bool = False
                 ) -> dict[str, Any]:
        """``image``: a path, the image's bytes, or an open binary file object."""
        if isinstance(image, (bytes, bytearray)):
            label, data = "image bytes", bytes(image)
        elif hasattr(image, "read"):
            label, data = str(getattr(image, "name", "image file object")), image.read()
        else:
            label, data = str(image), _read(image)
        query = urllib.parse.urlencode({"top_k": top_k, **({"embedding": 1} if embedding else {})})
        request = urllib.request.Request(f"{self.url}/v1/classify?{query}", data=data, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        status, body = self._send(request)
        if status == 422:
            raise ImageError(f"{label}: {body.get('error', 'cannot decode image')}")
        if status != 200:
            raise ServeError(f"{self.url}: HTTP {status}: {body.get('error', body)}")
        return body

    def health(self) -> dict[str, Any]:
        status, body = self._send(urllib.request.Request(f"{self.url}/v1/health"))
        if status != 200:
            raise ServeError(f"{self.url}: not ready (HTTP {status})")
        return body

    def _send(self, request: urllib.request.Request) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read())
        except (urllib.error.URLError, OSError) as e:
            raise ServeError(f"{self.url}: cannot reach the server ({e})") from None


def _read(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"error": raw[:200].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"value": value}
