"""Serve a mixture with LangServe: ``/moa/invoke``, ``/batch``, ``/stream``, ``/stream_events``.

``create_app(moa)`` returns a FastAPI app with LangServe's routes for the mixture, so any
``langserve.RemoteRunnable`` (Python or JS) uses the served mixture like a local chat model::

    from langserve import RemoteRunnable
    moa = RemoteRunnable("http://127.0.0.1:8000/moa/")
    moa.invoke("What are 3 fun things to do in SF?")      # AIMessage with the proposals

Clients cannot change the models, endpoints or keys behind the routes. LangServe lets clients
send ``config["configurable"]`` by default; here it is refused (HTTP 422) unless the server
names the configurable fields a client may set (``configurable=("temperature",)`` for a mixture
built with ``configurable_fields``), and then every other configurable key is refused too.
Call-time keyword arguments are never forwarded by LangServe. Tags and run metadata, which
only label traces, are accepted.

Needs the ``langserve[server]`` stack (``requirements/langserve.txt``), which cannot share an
environment with ``langgraph-cli[inmem]``: the two pin different ``sse-starlette`` majors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from langchain_core.runnables import Runnable
from langserve import add_routes

# LangServe's own decoding of a config hash in the path (no public function does it): the
# modifier must see exactly what the client sent.
from langserve.api_handler import _config_from_hash

__all__ = ["DEFAULT_PATH", "ConfigModifier", "create_app", "restrict_configurable"]

DEFAULT_PATH = "/moa"
"""Where ``create_app`` mounts the mixture's routes."""

_LABEL_KEYS: tuple[str, ...] = ("tags", "metadata")
"""Config keys a client may always send: they only label the traced run."""


ConfigModifier = Callable[[dict[str, Any], Request], Awaitable[dict[str, Any]]]
"""LangServe's ``per_req_config_modifier``: ``(config, request) -> config``."""


def restrict_configurable(allowed: Collection[str]) -> ConfigModifier:
    """A LangServe ``per_req_config_modifier`` refusing configurable keys not in ``allowed``.

    LangServe validates a client's ``config`` against the runnable's config schema and silently
    drops keys it does not know; this modifier reads what the client actually sent (the JSON
    body's ``config``, a dict or a list of them for ``/batch``, and a config hash in the path)
    and answers HTTP 422 naming every refused key, so a client learns that its setting was not
    applied instead of getting an answer from a model it did not ask for.
    """
    allowed_keys = frozenset(allowed)

    async def modifier(config: dict[str, Any], request: Request) -> dict[str, Any]:
        refused = sorted(await _sent_configurable_keys(request) - allowed_keys)
        if refused:
            raise HTTPException(
                422,
                f"configurable: not allowed: {', '.join(refused)}; "
                f"allowed: {', '.join(sorted(allowed_keys)) or 'none'}",
            )
        configurable = config.get("configurable") or {}
        kept = {key: value for key, value in configurable.items() if key in allowed_keys}
        return {**config, "configurable": kept} if "configurable" in config else config

    return modifier


async def _sent_configurable_keys(request: Request) -> set[str]:
    """The ``configurable`` keys of every config the client sent with ``request``."""
    configs: list[Any] = []
    config_hash = request.path_params.get("config_hash")
    if config_hash:
        configs.append(_config_from_hash(config_hash))
    if request.method == "POST":
        try:
            body = await request.json()  # Starlette caches the body LangServe already read
        except ValueError:
            body = None
        sent = body.get("config") if isinstance(body, dict) else None
        configs.extend(sent if isinstance(sent, list) else [sent])
    keys: set[str] = set()
    for config in configs:
        configurable = config.get("configurable") if isinstance(config, dict) else None
        if isinstance(configurable, dict):
            keys.update(str(key) for key in configurable)
    return keys


def create_app(
    moa: Runnable[Any, Any],
    *,
    path: str = DEFAULT_PATH,
    configurable: Collection[str] = (),
    title: str = "Mixture-of-Agents",
    playground: bool = True,
    app: FastAPI | None = None,
    **add_routes_kwargs: Any,
) -> FastAPI:
    """A FastAPI app serving ``moa`` with LangServe under ``path``.

    Args:
        moa: the mixture (a ``ChatMixtureOfAgents``, or any runnable built on one).
        path: where the routes are mounted (``/moa/invoke``, ``/moa/batch``, ``/moa/stream``,
            ``/moa/stream_events``, ``/moa/stream_log``, schemas and the playground).
        configurable: the configurable fields clients may set (for a runnable built with
            ``configurable_fields``). Empty by default: a request with any ``configurable`` is
            refused with HTTP 422, so clients never swap models, endpoints or keys.
        title: the OpenAPI title of a new app.
        playground: serve LangServe's playground at ``<path>/playground/``.
        app: add the routes to this app instead of a new one.
        **add_routes_kwargs: passed on to ``langserve.add_routes`` (``dependencies``,
            ``enable_feedback_endpoint``, ...). ``config_keys`` and
            ``per_req_config_modifier`` are set here and cannot be overridden.

    Returns:
        The app; run it with ``uvicorn.run(app, host="127.0.0.1", port=8000)``.
    """
    for reserved in ("config_keys", "per_req_config_modifier"):
        if reserved in add_routes_kwargs:
            raise ValueError(f"{reserved}: set by create_app; use `configurable` instead")
    app = app if app is not None else FastAPI(title=title)
    # "configurable" stays a config key even when nothing is allowed: LangServe fills in the
    # defaults of declared configurable fields and would refuse every request otherwise. The
    # modifier refuses what clients send beyond the allowlist and drops the other defaults.
    config_keys = (*_LABEL_KEYS, "configurable")
    modifier = restrict_configurable(configurable)
    disabled: list[str] = list(add_routes_kwargs.pop("disabled_endpoints", None) or [])
    if not playground and "playground" not in disabled:
        disabled.append("playground")
    if disabled:
        add_routes_kwargs["disabled_endpoints"] = disabled
    add_routes(
        app,
        moa,
        path=path,
        config_keys=config_keys,
        per_req_config_modifier=modifier,
        **add_routes_kwargs,
    )
    return app
