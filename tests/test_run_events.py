"""The playground page (``GET /``) and the run-event stream it reads (``POST /v1/moa/runs``),
served against the loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from moa_graph.cli.main import build_parser
from moa_graph.cli.options import serve_options
from moa_graph.serve.openai_app import MoAServer
from moa_graph.serve.playground_page import ASSETS, CONTENT_SECURITY_POLICY
from moa_graph.testing import FaultSpec, ModelScript, OpenAICompatibleServer
from tests.support.remote_mixture import remote_mixture

KEY = "served-key-0123456789abcdef"
LEAKED = "sk-proj-leakedleakedleaked0123"
NAME = "moa-<test>"
ANSWER = "The answer is 42, said the mixture."
USER = [{"role": "user", "content": "What is six times seven?"}]


@pytest.fixture
def upstream() -> Iterator[OpenAICompatibleServer]:
    scripts = {
        "p1": ModelScript(reply="It is 42 because 6 * 7 = 42."),
        "p2": ModelScript(reply="Six sevens make 42."),
        "agg": ModelScript(reply=ANSWER),
    }
    with OpenAICompatibleServer(scripts) as server:
        yield server


@pytest.fixture
def served(upstream: OpenAICompatibleServer) -> Iterator[MoAServer]:
    with MoAServer(remote_mixture(upstream), model_name=NAME, api_key=KEY) as server:
        yield server


def root(server: MoAServer) -> str:
    return server.base_url.removesuffix("/v1")


def events_of(server: MoAServer, key: str = KEY, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    request = {"model": NAME, "messages": USER, **body}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", server.base_url + "/moa/runs", json=request, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        text = response.read().decode()
    events = []
    for block in text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        events.append(
            (name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: ")))
        )
    return events


# -- the page ----------------------------------------------------------------------------------


def test_the_page_is_served_with_a_policy_that_forbids_inline_script(served: MoAServer) -> None:
    response = httpx.get(root(served) + "/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert (
        "script-src 'self'" in CONTENT_SECURITY_POLICY
        and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    )
    page = response.text
    assert 'data-auth-required="true"' in page
    assert 'data-model="moa-&lt;test&gt;"' in page  # the name is escaped, not markup
    choices = json.loads(re.search(r'data-choices="([^"]*)"', page)[1].replace("&quot;", '"'))  # type: ignore[index]
    assert choices["staircase"] is True and {"synthesize", "vote"} <= set(choices["aggregation"])
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"https?://", page), "the page refers to another origin"


def test_the_assets_are_served_and_nothing_else_is(served: MoAServer) -> None:
    total = len(httpx.get(root(served) + "/").content)
    for name, media_type in ASSETS.items():
        response = httpx.get(root(served) + "/playground/" + name)
        assert response.status_code == 200 and response.headers["content-type"] == media_type
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert not re.search(r"https?://", response.text)
        total += len(response.content)
    assert total <= 150 * 1024  # the page's weight, uncompressed
    for other in ("../openai_app.py", "index.html", "nope.js"):
        assert httpx.get(root(served) + "/playground/" + other).status_code == 404


def test_no_playground_leaves_the_page_out(upstream: OpenAICompatibleServer) -> None:
    with MoAServer(remote_mixture(upstream), model_name=NAME, playground=False) as server:
        assert httpx.get(root(server) + "/").status_code == 404
        assert httpx.get(root(server) + "/playground/app.js").status_code == 404
    args = build_parser().parse_args(["serve", "--no-playground"])
    assert serve_options(args)["playground"] is False
    assert serve_options(build_parser().parse_args(["serve"]))["playground"] is True


# -- the event stream --------------------------------------------------------------------------


def test_a_run_streams_its_shape_proposals_answer_and_totals(served: MoAServer) -> None:
    events = events_of(served)
    names = [name for name, _ in events]
    assert names[0] == "run" and names[-1] == "done"
    shape = events[0][1]
    assert [p["model"] for p in shape["layers"][0]["proposers"]] == ["p1", "p2"]
    assert shape["aggregator"]["layer"] == 2 and shape["aggregation"] == "synthesize"
    for index, reply in enumerate(["It is 42 because 6 * 7 = 42.", "Six sevens make 42."]):
        mine = [
            data for name, data in events if data.get("index") == index and data.get("layer") == 1
        ]
        deltas = "".join(d["text"] for d in mine if "text" in d and "attempts" not in d)
        finished = [d for d in mine if d.get("attempts") and d.get("text") is not None]
        assert deltas == reply and finished[-1]["text"] == reply
        assert names.index("proposal_finished") < names.index("answer_delta")
    answer = "".join(data["text"] for name, data in events if name == "answer_delta")
    done = events[-1][1]
    assert answer == done["answer"] == ANSWER
    assert done["calls"] == 3 and done["usage"]["total_tokens"] > 0
    assert 0 <= done["first_token_s"] <= done["wall_s"] and done["votes"] is None


def test_per_run_choices_reach_the_run(served: MoAServer) -> None:
    events = events_of(served, choices={"aggregation": "vote"})
    assert events[0][1]["aggregation"] == "vote"
    done = events[-1][1]
    assert done["votes"]["answers"] == ["42", "42"] and done["votes"]["winner"] == "42"
    assert done["calls"] == 2  # the vote agreed: no aggregator call


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"choices": {"layers": 3}}, 400, "'layers' is not one"),
        ({"choices": {"aggregation": "telepathy"}}, 400, "telepathy"),
        ({"choices": ["vote"]}, 400, "choices must be a JSON object"),
        ({"model": "other"}, 404, "does not exist"),
        ({"messages": []}, 400, "messages"),
        ({"n": 2}, 400, "n=2"),
    ],
)
def test_bad_run_requests_are_refused_before_any_call(
    served: MoAServer, upstream: OpenAICompatibleServer, body: dict[str, Any], status: int,
    words: str,
) -> None:  # fmt: skip
    request = {"model": NAME, "messages": USER, **body}
    response = httpx.post(served.base_url + "/moa/runs", json=request,
                          headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert response.status_code == status
    assert words in response.json()["error"]["message"]
    assert upstream.request_count() == 0


def test_the_event_stream_needs_the_key(
    served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    response = httpx.post(served.base_url + "/moa/runs", json={"model": NAME, "messages": USER},
                          headers={"Authorization": "Bearer wrong"})  # fmt: skip
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert upstream.request_count() == 0


def test_a_failed_run_ends_with_an_error_event(
    served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    upstream.add_faults("agg", FaultSpec("http_400", message=f"bad key {LEAKED}"))
    events = events_of(served)
    name, data = events[-1]
    assert name == "error" and data["code"] == "mixture_failed"
    assert "AggregatorError" in data["message"] and LEAKED not in json.dumps(events)


def test_a_client_that_leaves_cancels_every_call(
    served: MoAServer, upstream: OpenAICompatibleServer
) -> None:
    upstream.set_script("p2", ModelScript(reply="slow " * 200, per_token=0.05))
    request = {"model": NAME, "messages": USER}
    headers = {"Authorization": f"Bearer {KEY}"}
    url = served.base_url + "/moa/runs"
    with httpx.stream("POST", url, json=request, headers=headers, timeout=30) as response:
        for line in response.iter_lines():
            if line == "event: proposal_delta":
                break  # the page was closed while p2 writes
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        outcomes = [r.outcome for r in upstream.requests_for("p2")]
        if outcomes == ["client_disconnected"]:
            break
        time.sleep(0.05)
    assert [r.outcome for r in upstream.requests_for("p2")] == ["client_disconnected"]
    assert upstream.requests_for("agg") == []
