"""The playground in a real browser: Debian's Chromium driven by Playwright (``make test-browser``).

Each test serves a mixture whose models are clients of the loopback OpenAI-compatible server, so
the page talks to a real ``moa-graph serve`` app and nothing leaves the machine. ``CHROMIUM``
names the browser binary (default ``/usr/bin/chromium``; ``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from moa_graph.serve.openai_app import MoAServer
from moa_graph.testing import ModelScript, OpenAICompatibleServer
from tests.support.remote_mixture import remote_mixture

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
KEY = "served-key-0123456789abcdef"
NAME = "moa-browser"
ANSWER = "Paris is the capital of France."

# No network beyond the loopback server, no first-run work, no GPU on these machines.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no browser at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


@pytest.fixture
def upstream() -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "p1": ModelScript(reply="It is Paris, on the Seine."),
        "p2": ModelScript(reply="Paris."),
        "agg": ModelScript(reply=ANSWER),
    }
    with OpenAICompatibleServer(scripts) as server:
        yield server


@pytest.fixture
def served(upstream: OpenAICompatibleServer) -> Iterator[MoAServer]:
    with MoAServer(remote_mixture(upstream), model_name=NAME, api_key=KEY) as server:
        yield server


def page_url(server: MoAServer) -> str:
    """The playground's address on a running server."""
    return server.base_url.removesuffix("/v1") + "/"
