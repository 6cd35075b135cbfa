"""The playground in Chromium: how fast a proposer's token reaches its card, and whether the page
stays responsive while a large run streams. Optionally, a screenshot of a finished local run.

- ``latency``: a 2-layer mixture of 2 proposers against the loopback OpenAI-compatible server (in
  this process), one proposer writing 200 tokens at 20 ms a token. The server side records when
  each ``proposal_delta`` event is handed to the connection; the page records (a
  ``MutationObserver``) when its card's text first holds that event's text. Both read the same
  clock (``time.time()`` / ``Date.now()``, one machine). Reported: p50, p95 and max of the delay.
- ``frames``: 3 layers x 4 proposers writing 500 tokens each at 5 ms a token (so 800 tokens a
  second reach the page) and an aggregator writing 500; a ``requestAnimationFrame`` loop records
  every frame's gap while the run streams. Reported: the longest gap and the count over 100 ms.
- ``--screenshot PATH``: the embedded ``--preset`` (default ``local``) served as ``moa-graph
  serve`` serves it, one question asked in the page once a first one loaded the models, the
  finished page saved as a PNG.

Run: ``python -m benchmarks.playground`` (``--only latency|frames``, ``--screenshot
docs/images/playground.png``). Needs Chromium (``CHROMIUM``, default ``/usr/bin/chromium``) and
Playwright (``pip install --group browser``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from langchain_openai import ChatOpenAI
from playwright.sync_api import Browser, Page, sync_playwright

from moa_graph import ChatMixtureOfAgents, presets
from moa_graph.serve import run_events
from moa_graph.serve.openai_app import MoAServer
from moa_graph.testing import ModelScript, OpenAICompatibleServer

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--no-first-run"]  # fmt: skip

OBSERVE_CARDS = """() => {
  window.cardTimes = [];
  new MutationObserver(() => {
    for (const card of document.querySelectorAll("section.card")) {
      const text = card.querySelector(".text").textContent;
      window.cardTimes.push([card.getAttribute("aria-label"), text.length, Date.now()]);
    }
  }).observe(document.getElementById("layers"), {subtree: true, characterData: true,
                                                   childList: true});
}"""

WATCH_FRAMES = """() => {
  window.frameGaps = [];
  let last = performance.now();
  const tick = (now) => { window.frameGaps.push(now - last); last = now;
                          if (!window.stopFrames) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
}"""


def remote(upstream: OpenAICompatibleServer, model: str) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=upstream.base_url, api_key="sk-bench",  # type: ignore[arg-type]
                      max_retries=0, stream_usage=True)  # fmt: skip


@contextmanager
def recorded_sends() -> Iterator[list[tuple[float, str, int]]]:
    """Record when each ``proposal_delta`` event is sent: (time, layer:index, chars so far)."""
    sent: list[tuple[float, str, int]] = []
    written: dict[tuple[int, int], int] = {}
    original = run_events.sse_event

    def recording(name: str, data: dict[str, Any]) -> bytes:
        if name == "proposal_delta":
            key = (data["layer"], data["index"])
            written[key] = written.get(key, 0) + len(data["text"])
            sent.append((time.time(), f"{data['layer']}:{data['index']}", written[key]))
        return original(name, data)

    run_events.sse_event = recording  # type: ignore[assignment]
    try:
        yield sent
    finally:
        run_events.sse_event = original  # type: ignore[assignment]


def ask(page: Page, server: MoAServer, question: str, timeout_ms: int = 600_000) -> None:
    page.goto(server.base_url.removesuffix("/v1") + "/")
    page.get_by_label("Question").fill(question)
    page.get_by_role("button", name="Ask").click()
    page.wait_for_function(
        "() => document.getElementById('answer-status').textContent === 'done'", timeout=timeout_ms
    )


def latency(browser: Browser) -> dict[str, Any]:
    scripts = {"p1": ModelScript(reply="tok " * 200, per_token=0.02),
               "p2": ModelScript(reply="short."), "agg": ModelScript(reply="done.")}  # fmt: skip
    with OpenAICompatibleServer(scripts) as upstream:
        moa = ChatMixtureOfAgents(proposers=[remote(upstream, "p1"), remote(upstream, "p2")],
                                  aggregator=remote(upstream, "agg"), layers=2)  # fmt: skip
        with MoAServer(moa, model_name="bench") as server, recorded_sends() as sent:
            page = browser.new_page()
            page.goto(server.base_url.removesuffix("/v1") + "/")
            page.evaluate(OBSERVE_CARDS)
            page.get_by_label("Question").fill("Write.")
            page.get_by_role("button", name="Ask").click()
            page.wait_for_function(
                "() => document.getElementById('answer-status').textContent === 'done'"
            )
            seen = page.evaluate("() => window.cardTimes")
            page.close()
    delays = []
    for sent_at, key, chars in sent:
        layer, index = key.split(":")
        label = f"Layer {layer} proposer {int(index) + 1}"
        shown = [t for name, length, t in seen if name.startswith(label) and length >= chars]
        if shown:
            delays.append(max(0.0, shown[0] / 1000 - sent_at) * 1000)
    delays.sort()
    return {"deltas": len(sent), "matched": len(delays),
            "p50_ms": round(statistics.median(delays), 1),
            "p95_ms": round(delays[int(0.95 * (len(delays) - 1))], 1),
            "max_ms": round(delays[-1], 1)}  # fmt: skip


def frames(browser: Browser) -> dict[str, Any]:
    names = [f"p{i}" for i in range(1, 5)]
    scripts = {name: ModelScript(reply="token " * 500, per_token=0.005) for name in names}
    scripts["agg"] = ModelScript(reply="answer " * 500, per_token=0.005)
    with OpenAICompatibleServer(scripts) as upstream:
        moa = ChatMixtureOfAgents(proposers=[remote(upstream, n) for n in names],
                                  aggregator=remote(upstream, "agg"), layers=3)  # fmt: skip
        with MoAServer(moa, model_name="bench") as server:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.base_url.removesuffix("/v1") + "/")
            page.evaluate(WATCH_FRAMES)
            started = time.perf_counter()
            page.get_by_label("Question").fill("Write.")
            page.get_by_role("button", name="Ask").click()
            page.wait_for_function(
                "() => document.getElementById('answer-status').textContent === 'done'",
                timeout=120_000,
            )
            wall = time.perf_counter() - started
            gaps = page.evaluate("() => { window.stopFrames = true; return window.frameGaps; }")
            page.close()
    gaps = gaps[1:]  # the first gap counts from the observer's start
    return {"wall_s": round(wall, 2), "frames": len(gaps), "longest_ms": round(max(gaps), 1),
            "over_100_ms": sum(g > 100 for g in gaps)}  # fmt: skip


def screenshot(browser: Browser, path: str, preset: str, question: str) -> dict[str, Any]:
    moa = presets.get_preset(preset).chat_model()
    with MoAServer(moa) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        ask(page, server, "Say hello.")  # the first request loads the models: a served steady state
        started = time.perf_counter()
        ask(page, server, question)
        wall = time.perf_counter() - started
        page.wait_for_timeout(200)
        page.screenshot(path=path, full_page=True)
        first = page.get_by_role("region", name="Run").inner_text()
        page.close()
    return {"path": path, "preset": preset, "wall_s": round(wall, 1), "run": first.split("\n")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["latency", "frames"])
    parser.add_argument("--screenshot", metavar="PATH")
    parser.add_argument("--preset", default="local")
    parser.add_argument("--question", default="What are 3 fun things to do in San Francisco?")
    args = parser.parse_args()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        results: dict[str, Any] = {}
        if args.screenshot:
            results["screenshot"] = screenshot(browser, args.screenshot, args.preset, args.question)
        else:
            if args.only in (None, "latency"):
                results["latency"] = latency(browser)
            if args.only in (None, "frames"):
                results["frames"] = frames(browser)
        browser.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
