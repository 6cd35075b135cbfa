"""Systems under test: single model, MoA, Self-MoA and the best-of-n LLM ranker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage

from moa_graph import ChatMixtureOfAgents
from moa_graph.evaluation.costs import TokenUsage
from moa_graph.evaluation.datasets import Item
from moa_graph.evaluation.systems import (
    Answer,
    SeedMode,
    best_of_n_ranker,
    config_hash,
    instruction_text,
    item_seed,
    moa,
    parse_system,
    self_moa,
    single,
)
from moa_graph.strategies.rank import parse_ranker_choice, ranker_messages
from tests.fakes import ScriptedChatModel

TWO_TURNS = Item(id="x/1", turns=("What is 2 + 2?", "And times 3?"))


def test_single_answers_every_turn_with_the_history() -> None:
    model = ScriptedChatModel(reply=lambda m: "4" if len(m) == 1 else "12", model_name="m")
    system = single(model, name="solo")
    answer = system.answer(TWO_TURNS)
    assert answer.turns == ("4", "12") and answer.text == "12"
    assert answer.calls == 2
    assert [(m.type, m.text) for m in model.calls[1]] == [
        ("human", "What is 2 + 2?"),
        ("ai", "4"),
        ("human", "And times 3?"),
    ]
    # usage: words of the prompts and answers, by model label
    assert answer.usage == {"m": TokenUsage(5 + 9, 2)}
    assert answer.wall_s >= 0 and system.config["kind"] == "single"


def test_answers_round_trip_and_system_keys_follow_the_configuration() -> None:
    answer = Answer(("a", "b"), {"m": TokenUsage(1, 2)}, wall_s=1.5, calls=2, extra=({"k": 1},))
    assert Answer.from_dict(answer.to_dict()) == answer
    first = single("local:smollm2-135m", max_tokens=64)
    assert first.key == single("local:smollm2-135m", max_tokens=64).key
    assert first.key != single("local:smollm2-135m", max_tokens=128).key
    assert first.key.startswith("smollm2-135m#")
    assert config_hash({"a": [1, 2]}) != config_hash({"a": [2, 1]})


def _mixture() -> tuple[ChatMixtureOfAgents, ScriptedChatModel]:
    aggregator = ScriptedChatModel(reply="final", model_name="agg")
    mixture = ChatMixtureOfAgents(
        proposers=[
            ScriptedChatModel(reply="one two", model_name="p1"),
            ScriptedChatModel(reply="three", model_name="p2"),
        ],
        aggregator=aggregator,
        layers=2,
    )
    return mixture, aggregator


def test_moa_counts_calls_and_splits_usage_by_model() -> None:
    mixture, aggregator = _mixture()
    system = moa(mixture, name="mix")
    answer = system.answer(Item(id="x/1", turns=("hello there",)))
    assert answer.text == "final" and answer.calls == 3
    assert answer.usage["p1"] == TokenUsage(2, 2) and answer.usage["p2"] == TokenUsage(2, 1)
    assert answer.usage["agg"].output_tokens == 1
    assert answer.usage["agg"].input_tokens == sum(len(m.text.split()) for m in aggregator.calls[0])
    proposals = answer.extra[0]["proposals"]
    assert [(p["model"], p["text"]) for p in proposals] == [("p1", "one two"), ("p2", "three")]
    assert system.config["kind"] == "moa" and system.config["layers"] == 2


def test_moa_from_presets_and_built_mixtures() -> None:
    tiny = moa("local-tiny")
    assert tiny.config["recipe"] == "local-tiny" and tiny.config["max_tokens"] == 96
    assert moa("local-tiny", max_tokens=32).config["max_tokens"] == 32
    with pytest.raises(ValueError, match="neither a preset"):
        moa("no-such-preset")
    mixture, _ = _mixture()
    with pytest.raises(ValueError, match="overrides need a recipe"):
        moa(mixture, temperature=0.1)


def test_moa_from_a_toml_recipe(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'layers = 2\naggregator = "local:smollm2-135m"\nproposers = ["local:smollm2-135m"]\n',
        encoding="utf-8",
    )
    system = parse_system(f"moa:{path}")
    assert system.name == "mine" and system.config["aggregator"] == "smollm2-135m"


def test_self_moa_samples_one_model_n_times_then_aggregates() -> None:
    model = ScriptedChatModel(reply="sample", model_name="solo")
    system = self_moa(model, n=3, name="self")
    answer = system.answer(Item(id="x/1", turns=("q",)))
    assert len(model.calls) == 4 and answer.calls == 4  # 3 samples + the aggregation
    assert system.config["kind"] == "self-moa"
    assert len(system.config["proposers"][0]) == 3 and system.config["aggregator"] == "solo"
    aggregation = model.calls[-1]
    assert aggregation[0].type == "system" and aggregation[0].text.count("sample") == 3


def test_best_of_n_returns_the_ranked_candidate_verbatim() -> None:
    counter = iter(range(100))
    sampler = ScriptedChatModel(reply=lambda m: f"candidate {next(counter)}", model_name="s")
    ranker = ScriptedChatModel(reply="model_2", model_name="r")
    system = best_of_n_ranker(sampler, 3, ranker=ranker, name="bo3")
    answer = system.answer(Item(id="x/1", turns=("Pick one",)))
    candidates = answer.extra[0]["candidates"]
    assert sorted(candidates) == ["candidate 0", "candidate 1", "candidate 2"]
    assert answer.text == candidates[1] and answer.extra[0]["chosen"] == 1
    assert answer.extra[0]["ranker_parsed"] is True
    assert answer.calls == 4 and len(sampler.calls) == 3 and len(ranker.calls) == 1
    prompt = ranker.calls[0][-1].text
    assert "Pick one" in prompt and all(c in prompt for c in candidates)
    assert set(answer.usage) == {"s", "r"}
    assert system.config["n"] == 3 and system.config["ranker"] == "r"


def test_best_of_n_falls_back_to_the_first_candidate_on_an_unreadable_ranking() -> None:
    sampler = ScriptedChatModel(reply="same", model_name="s")
    system = best_of_n_ranker(sampler, 2, ranker=ScriptedChatModel(reply="I cannot decide"))
    answer = system.answer(Item(id="x/1", turns=("q",)))
    assert answer.extra[0]["chosen"] == 0 and answer.extra[0]["ranker_parsed"] is False
    with pytest.raises(ValueError, match="n: the number"):
        best_of_n_ranker(sampler, 0)


@pytest.mark.parametrize("seed_mode", ["per-item", "fixed"])
def test_every_kind_draws_with_the_items_seed_or_the_fixed_one(seed_mode: SeedMode) -> None:
    model = ScriptedChatModel(reply="The answer is 4", model_name="m")
    ranker = ScriptedChatModel(reply="model_1", model_name="r")
    systems = [single(model, seed=2, seed_mode=seed_mode),
               best_of_n_ranker(model, 2, ranker=ranker, seed=2, seed_mode=seed_mode),
               self_moa(model, n=2, seed=2, seed_mode=seed_mode)]  # fmt: skip
    for item in ("x/1", "x/2"):
        for system in systems:
            system.answer(Item(id=item, turns=("What is 2 + 2?",)))
    drawn = [kwargs["seed"] for kwargs in model.call_kwargs]
    per_item = seed_mode == "per-item"
    first, second = (item_seed(2, "x/1"), item_seed(2, "x/2")) if per_item else (2, 2)
    # per item: alone, two candidates, two samples, the synthesis (with the first sample's seed)
    assert sorted(drawn[:6]) == sorted([first, first, first + 1, first, first + 1, first])
    assert sorted(drawn[6:]) == sorted([second, second, second + 1, second, second + 1, second])
    assert all(system.seed_mode == seed_mode for system in systems)
    # a fixed seed keeps the configuration (and so the cache keys) of runs made before the mode
    assert ("seed_mode" in systems[0].config) is per_item


def test_ranker_prompt_and_parsing() -> None:
    messages = ranker_messages('Say "hi"', ["a\nb", "c"])
    text = messages[-1].text
    assert '"instruction": "Say \\"hi\\""' in text  # JSON-escaped
    assert '"model_identifier": "model_2"' in text and "model_1, model_2" in text
    assert parse_ranker_choice("model_2", 2) == 1
    assert parse_ranker_choice("The best is Model 1.", 2) == 0
    assert parse_ranker_choice("model_3", 2) is None and parse_ranker_choice("", 2) is None
    with pytest.raises(ValueError):
        ranker_messages("q", [])


def test_instruction_text_shows_earlier_turns() -> None:
    messages: list[BaseMessage] = TWO_TURNS.messages(["4"])
    assert (
        instruction_text(messages) == "User: What is 2 + 2?\n\nAssistant: 4\n\nUser: And times 3?"
    )
    assert instruction_text(TWO_TURNS.messages()) == "What is 2 + 2?"


@pytest.mark.parametrize(
    ("spec", "name", "kind"),
    [
        ("single:local:smollm2-135m", "smollm2-135m", "single"),
        ("local:smollm2-135m", "smollm2-135m", "single"),
        ("moa:local-tiny", "local-tiny", "moa"),
        ("local-tiny,name=tiny", "tiny", "moa"),
        ("self-moa:local:smollm2-135m,n=3", "self-moa-smollm2-135m-x3", "self-moa"),
        ("best-of-n:local:smollm2-135m,n=2", "best-of-2-smollm2-135m", "best-of-n"),
    ],
)
def test_parse_system_specs(spec: str, name: str, kind: str) -> None:
    system = parse_system(spec)
    assert (system.name, system.config["kind"]) == (name, kind)


def test_parse_system_options_and_errors(local_models_present: None) -> None:
    ranked = parse_system("best-of-n:local:smollm2-135m,n=3,ranker=local:qwen2.5-coder-0.5b")
    assert ranked.config["n"] == 3 and ranked.config["ranker"] == "qwen2.5-coder-0.5b"
    assert parse_system("local:smollm2-135m", max_tokens=64).config["max_tokens"] == 64
    assert parse_system("moa:local-tiny").config["max_tokens"] == 96  # the recipe's own
    assert parse_system("self-moa:local:smollm2-135m,n=2,layers=3").config["layers"] == 3
    with pytest.raises(ValueError, match="unknown option"):
        parse_system("single:local:smollm2-135m,bogus=1")
    with pytest.raises(ValueError, match="key=value"):
        parse_system("single:local:smollm2-135m,oops")
    with pytest.raises(ValueError, match="unknown provider"):
        parse_system("nosuchprovider:model-x")


def test_a_single_model_or_best_of_n_spec_sets_its_own_temperature_and_length(
    local_models_present: None,
) -> None:
    greedy = parse_system("local:smollm2-135m,temperature=0,name=greedy", temperature=0.7)
    assert (greedy.name, greedy.config["temperature"]) == ("greedy", 0.0)  # the spec's wins
    assert greedy.config != parse_system("local:smollm2-135m", temperature=0.7).config
    short = parse_system("best-of-n:local:smollm2-135m,n=2,max_tokens=16,temperature=1.2")
    assert (short.config["max_tokens"], short.config["temperature"]) == (16, 1.2)
    with pytest.raises(ValueError, match="temperature must be a number, got 'hot'"):
        parse_system("local:smollm2-135m,temperature=hot")


def test_parse_system_mixture_settings_and_seed() -> None:
    system = parse_system(
        "self-moa:local:smollm2-135m,n=3,aggregation=vote,extractor=choice,shuffle=true,"
        "early_exit=yes",
        seed=4,
        answer_extractor="number",
    )
    config = system.config
    assert (config["aggregation"], config["answer_extractor"]) == ("vote", "choice")
    assert config["shuffle_references"] is True and config["early_exit"] is True
    assert config["seed"] == 4
    assert parse_system("local-tiny", answer_extractor="number").config["answer_extractor"] == (
        "number"
    )
    assert parse_system("local:smollm2-135m", seed=9).config["seed"] == 9
    window = parse_system("self-moa:local:smollm2-135m,n=5,window=3").config
    assert window["aggregation_window"] == 3
    with pytest.raises(ValueError, match="shuffle: expected true or false"):
        parse_system("self-moa:local:smollm2-135m,shuffle=maybe")
    with pytest.raises(ValueError, match="unknown option"):
        parse_system("single:local:smollm2-135m,aggregation=vote")  # a single model has none


def test_a_shared_call_cache_makes_each_identical_call_once(tmp_path: Path) -> None:
    from langchain_core.globals import set_llm_cache

    from moa_graph.evaluation.call_cache import CallCache

    numbers = iter(range(1, 10))
    model = ScriptedChatModel(
        reply=lambda m: f"The answer is {next(numbers)}", model_name="m", delay=0.2
    )
    item = Item(id="x/2", turns=("What is 2 + 2?",))
    cache = CallCache(tmp_path / "calls.sqlite")
    set_llm_cache(cache)
    try:
        alone = single(model, seed=3).answer(item)
        mixture = self_moa(model, n=2, seed=3).answer(item)
        voted = self_moa(model, n=2, seed=3, aggregation="vote", name="vote").answer(item)
    finally:
        set_llm_cache(None)
    # the single call is sample 1 of both mixtures; sample 2 is shared by the two mixtures; all
    # draw with the item's seed
    seed = item_seed(3, item.id)
    assert [kwargs["seed"] for kwargs in model.call_kwargs] == [seed, seed + 1, seed, seed]
    assert len(model.calls) == 4  # alone, sample 2, synthesis, vote's tie-break synthesis
    assert (alone.text, mixture.text, voted.text) == ("The answer is 1", "The answer is 3",
                                                      "The answer is 4")  # fmt: skip
    assert mixture.calls == 3 and voted.calls == 3 and alone.calls == 1
    assert cache.hits == 3 and len(cache) == 4
    assert len(CallCache(tmp_path / "calls.sqlite")) == 4  # kept on disk for the next run
    # model seconds count cached calls at the time they took when made (0.2 s each): the
    # mixture made 2 of its 3 calls, the vote 1 of 3, so only counting cached ones reaches 0.6
    assert alone.model_s is not None and mixture.model_s is not None and voted.model_s is not None
    assert alone.model_s >= 0.2 and mixture.model_s >= 0.6 and voted.model_s >= 0.6


def test_a_call_in_flight_when_the_experiment_stops_keeps_its_answer(tmp_path: Path) -> None:
    """An interrupted experiment closes its call cache while a proposer's call still runs: the
    call's answer is stored as it ends (once no call is in flight, the store closes)."""
    import sqlite3

    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration

    from moa_graph.evaluation.call_cache import CallCache

    cache = CallCache(tmp_path / "calls.sqlite")
    assert cache.lookup("2 + 2?", "model") is None  # the call starts...
    cache.close()  # ...the experiment stops...
    cache.update("2 + 2?", "model", [ChatGeneration(message=AIMessage("4"))])  # ...it ends
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        len(cache)  # closed once nothing was in flight
    served = CallCache(tmp_path / "calls.sqlite").lookup("2 + 2?", "model")
    assert served is not None and served[0].text == "4"  # the rerun pays nothing for it


def test_call_cache_times_calls_and_marks_calls_cached_before_timing_unknown(
    tmp_path: Path,
) -> None:
    import sqlite3

    from langchain_core.globals import set_llm_cache
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from moa_graph.evaluation.call_cache import CallCache, timing_calls

    path = tmp_path / "calls.sqlite"
    with sqlite3.connect(path) as db:  # the layout of a cache written before calls were timed
        db.execute("CREATE TABLE calls (prompt TEXT, llm TEXT, generations TEXT, "
                   "PRIMARY KEY (prompt, llm))")  # fmt: skip
    cache = CallCache(path)
    reported = AIMessage("4", response_metadata={"compute_seconds": 7.25})
    model = GenericFakeChatModel(messages=iter([reported, AIMessage("5")]))
    set_llm_cache(cache)
    try:
        with timing_calls() as made:
            model.invoke("2 + 2?")
        with timing_calls() as served:
            model.invoke("2 + 2?")
        with sqlite3.connect(str(cache.path)) as older:  # as if cached by an older version
            older.execute("UPDATE calls SET seconds = NULL")
        with timing_calls() as untimed:
            assert model.invoke("2 + 2?").text == "4"
    finally:
        set_llm_cache(None)
    assert made.total == served.total == 7.25  # the time the model reports, not the cache's
    assert (untimed.calls, untimed.total) == (1, None)


def test_the_answers_of_one_request_are_as_many_calls_timed_at_the_requests_time(
    tmp_path: Path,
) -> None:
    import sqlite3

    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration

    from moa_graph.evaluation.call_cache import CallCache, timing_calls

    cache = CallCache(tmp_path / "calls.sqlite")
    # three samples of one request, each charged a third of its 6 s (as the embedded models do)
    samples = [ChatGeneration(message=AIMessage(f"{k}", response_metadata={"compute_seconds": 2.0}))
               for k in range(3)]  # fmt: skip
    with timing_calls() as made:
        assert cache.lookup("prompt", "model") is None
        cache.update("prompt", "model", samples)
    with timing_calls() as served:
        assert len(cache.lookup("prompt", "model") or []) == 3
    assert (made.calls, made.total) == (served.calls, served.total) == (3, 6.0)
    with sqlite3.connect(tmp_path / "calls.sqlite") as older:  # stored by an older version:
        older.execute("UPDATE calls SET seconds = 2.0")  # the first answer's part only
    with timing_calls() as served_from_older_row:
        cache.lookup("prompt", "model")
    assert served_from_older_row.total == 6.0


@pytest.mark.local_model
def test_a_vote_over_samples_drawn_together_keeps_its_model_seconds(
    tmp_path: Path, local_models_present: None
) -> None:
    from langchain_core.globals import set_llm_cache

    from moa_graph.evaluation.call_cache import CallCache
    from moa_graph.local import ChatLocalModel

    model = ChatLocalModel(model="smollm2-135m", max_tokens=24, temperature=0.7)
    vote = self_moa(model, n=3, seed=1, aggregation="vote", answer_extractor="number")
    item = Item(id="x/1", turns=("What is 2 + 3? Answer with a number.",))
    set_llm_cache(CallCache(tmp_path / "calls.sqlite"))
    try:
        made, served = vote.answer(item), vote.answer(item)
    finally:
        set_llm_cache(None)
    # the three samples are one request (plus the aggregator when their answers tie)
    assert made.calls >= 3 and made.model_s is not None and made.model_s > 0
    assert (served.calls, served.model_s) == (made.calls, made.model_s)  # the cache's record


@pytest.mark.parametrize(("dataset", "extractor"), [("gsm8k", "number"), ("arc", "choice")])
def test_the_committed_experiment_keeps_its_cache_keys(
    dataset: str, extractor: str, local_models_present: None
) -> None:
    """The systems of ``experiments/run_local.sh`` still find their answers in the committed
    caches: a refactoring that changed a system's configuration would silently start over."""
    script = Path("experiments/run_local.sh").read_text()
    setup = script.split("for limit")[0]  # the variable definitions
    systems = subprocess.run(["sh", "-c", setup + 'echo "$SYSTEMS"'], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    cached = set()
    for line in Path(f"experiments/{dataset}-local/cache.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "answer":
            cached.add(record["key"][0])
    assert len(systems) == 12
    for spec in systems:
        system = parse_system(
            spec, max_tokens=320, seed=0, seed_mode="fixed", answer_extractor=extractor
        )
        assert system.key in cached or "staircase" in spec, spec  # the staircase ones are new


def test_the_per_item_seed_experiment_keeps_its_cache_keys(local_models_present: None) -> None:
    """``experiments/run_seeds.sh`` resumes from its committed cache (and
    ``experiments/pooled_seeds.py`` finds its answers) only while every system's key is the one
    it was answered under, for each base seed."""
    script = Path("experiments/run_seeds.sh").read_text()
    setup = script.split("for dataset")[0]  # the variable definitions
    systems = subprocess.run(["sh", "-c", setup + 'echo "$SYSTEMS"'], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    cached = {json.loads(line)["key"][0] for line in
              Path("experiments/gsm8k-per-item/cache.jsonl").read_text().splitlines()}  # fmt: skip
    assert len(systems) == 4
    keys = set()
    for seed in (1, 2):
        for spec in systems:
            system = parse_system(spec, max_tokens=320, seed=seed, answer_extractor="number")
            assert system.seed_mode == "per-item"
            keys.add(system.key)
    assert cached and cached <= keys  # every stored answer is found again
