"""The playground page of ``moa-graph serve`` (``GET /``) and its two assets.

The page is static text shipped in the wheel (``moa_graph/serve/playground/``: HTML, CSS and one
script, no build step, nothing from another origin). The server fills three attributes of its
``<body>`` (whether a key is needed, the served model's name, the per-run choices offered), all
HTML-escaped, and sends every file with a Content-Security-Policy that allows only this origin's
script, style and connections: no inline script, no other origin. The page holds no secret: the
event stream it reads (``POST /v1/moa/runs``) asks for the key.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from functools import cache
from importlib.resources import files

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this origin's script, style and requests; no inline script; no framing."""

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
"""The page's assets, served at ``/playground/<name>`` (no other name is)."""


@cache
def _asset(name: str) -> bytes:
    return files("moa_graph.serve").joinpath("playground", name).read_bytes()


def page_html(*, auth_required: bool, model: str, aggregations: Sequence[str]) -> str:
    """The page, its placeholders filled (escaped for an HTML attribute).

    Example:
        >>> page = page_html(auth_required=True, model="<moa>", aggregations=["vote"])
        >>> 'data-auth-required="true"' in page, 'data-model="&lt;moa&gt;"' in page
        (True, True)
    """
    choices = {"staircase": True, "aggregation": list(aggregations)}
    text = _asset("index.html").decode()
    for placeholder, value in (
        ("__AUTH_REQUIRED__", "true" if auth_required else "false"),
        ("__MODEL__", model),
        ("__CHOICES__", json.dumps(choices)),
    ):
        text = text.replace(placeholder, html.escape(value, quote=True))
    return text


def playground_routes(
    *, auth_required: bool, model_name: str, aggregations: Sequence[str]
) -> list[Route]:
    """``GET /`` (the page) and ``GET /playground/<asset>``, for a served mixture."""
    page = page_html(auth_required=auth_required, model=model_name, aggregations=aggregations)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise HTTPException(404)
        return Response(_asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)

    return [
        Route("/", index, methods=["GET"]),
        Route("/playground/{name}", asset, methods=["GET"]),
    ]
