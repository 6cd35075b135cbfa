"""What a user sees in the playground, checked in Chromium through the page's accessible names."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

from moa_graph.serve.openai_app import MoAServer
from moa_graph.testing import ModelScript, OpenAICompatibleServer
from tests_browser.conftest import ANSWER, KEY, page_url

SLOW = "word " * 60


def ask(page: Page, server: MoAServer, question: str, key: str = KEY) -> None:
    page.goto(page_url(server))
    page.get_by_label("API key").fill(key)
    page.get_by_label("Question").fill(question)
    page.get_by_role("button", name="Ask").click()


def test_a_slow_proposers_card_fills_while_it_writes_before_the_answer(
    page: Page, served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    upstream.set_script("p1", ModelScript(reply=SLOW.strip(), per_token=0.05))
    ask(page, served, "What is the capital of France?")
    slow_card = page.get_by_role("region", name="Layer 1 proposer 1")
    answer = page.get_by_role("region", name="Answer")
    expect(slow_card).to_contain_text("word word word", timeout=10_000)
    # the card shows part of what p1 writes while the answer has not started
    written = slow_card.inner_text().count("word")
    assert 3 <= written < 60
    assert ANSWER not in answer.inner_text()
    expect(page.get_by_role("region", name="Layer 1 proposer 2")).to_contain_text("Paris.")
    expect(answer).to_contain_text(ANSWER, timeout=20_000)
    expect(slow_card).to_contain_text("done")
    assert slow_card.inner_text().count("word") == 60
    run = page.get_by_role("region", name="Run")
    expect(run).to_contain_text("Calls3")
    expect(page.get_by_role("alert")).to_be_hidden()


def test_an_answer_carrying_html_is_shown_as_text_and_runs_nothing(
    page: Page, served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    payload = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> ok'
    upstream.set_script("agg", ModelScript(reply=payload))
    upstream.set_script("p2", ModelScript(reply='<b onmouseover="window.pwned = 3">bold</b>'))
    ask(page, served, "Say something dangerous")
    answer = page.get_by_role("region", name="Answer")
    expect(answer).to_contain_text("<script>window.pwned = 1</script>", timeout=20_000)
    expect(answer).to_contain_text('<img src=x onerror="window.pwned = 2"> ok')
    expect(page.get_by_role("region", name="Layer 1 proposer 2")).to_contain_text("<b onmouseover")
    assert page.evaluate("window.pwned") is None
    assert page.locator("main img, main script, main b").count() == 0


def test_a_wrong_key_is_an_alert_that_says_so(
    page: Page, served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    ask(page, served, "What is the capital of France?", key="not-the-key")
    expect(page.get_by_role("alert")).to_contain_text("API key was refused")
    assert upstream.request_count() == 0


def test_a_failed_run_is_an_alert(
    page: Page, served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    from moa_graph.testing import FaultSpec

    upstream.add_faults("agg", FaultSpec("http_400", message="the aggregator is down"))
    ask(page, served, "What is the capital of France?")
    expect(page.get_by_role("alert")).to_contain_text("AggregatorError", timeout=20_000)


def test_the_page_asks_nothing_of_another_origin(
    page: Page, served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    origins: set[str] = set()
    page.on("request", lambda request: origins.add(_origin(request.url)))
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text)
            if "Content Security Policy" in message.text else None)  # fmt: skip
    ask(page, served, "What is the capital of France?")
    expect(page.get_by_role("region", name="Answer")).to_contain_text(ANSWER, timeout=20_000)
    assert origins == {_origin(page_url(served))}
    assert violations == []


def test_the_key_is_kept_for_the_tab_only(
    page: Page, served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    ask(page, served, "What is the capital of France?")
    expect(page.get_by_role("region", name="Answer")).to_contain_text(ANSWER, timeout=20_000)
    assert page.evaluate("Object.values(localStorage)") == []
    assert KEY in page.evaluate("Object.values(sessionStorage)")
    assert KEY not in page.context.cookies().__repr__()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def test_a_vote_chosen_in_the_page_shows_its_tally(
    page: Page, served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    upstream.set_script("p1", ModelScript(reply="The answer is 42."))
    upstream.set_script("p2", ModelScript(reply="So 42."))
    page.goto(page_url(served))
    page.get_by_label("API key").fill(KEY)
    page.get_by_label("Question").fill("What is six times seven?")
    page.get_by_label("Aggregation").select_option("vote")
    page.get_by_role("button", name="Ask").click()
    answer = page.get_by_role("region", name="Answer")
    expect(answer).to_contain_text("Vote: 42", timeout=20_000)
    expect(answer).to_contain_text("42: 2 votes")
    assert upstream.requests_for("agg") == []  # the vote agreed: no aggregator call
