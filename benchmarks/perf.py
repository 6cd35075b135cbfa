"""Performance against the critical path: what moa_graph adds on top of the models' own latency.

An MoA answer can never come faster than its critical path: per proposer layer the slowest
proposer that must be waited for, plus the aggregator. Everything else is overhead. Against a
loopback OpenAI-compatible server with scripted latencies (``moa_graph.testing.ServerProcess``,
a child process; 4 proposers x 3 layers, 20-200 ms per call, real ``ChatOpenAI`` clients) this
reports, as ratios measured side by side in one run:

- latency: wall time / ideal critical path for ``ainvoke`` and ``invoke``, and for the hand-written
  ``asyncio.gather`` + ``openai`` baseline (``benchmarks.baseline``); moa_graph / baseline;
- first token: time to the first token of the final answer (``astream``) / (critical path to the
  aggregator + the aggregator's time to first token), baseline streamed the same way;
- concurrency: N concurrent runs in one process (each system in its own fresh child process,
  CPU-bound): wall time, CPU time per LLM call, peak RSS, moa_graph / baseline;
- tail: heavy-tailed proposer latency (seeded, a few calls 10x slower): p50/p90/p99 end-to-end
  latency waiting for all proposers against the straggler cut-off ``first_k``.

Run: ``python -m benchmarks.perf`` (``make bench``); ``--quick`` for a fast subset;
``--profile`` adds a cProfile of the concurrent workload, grouped by package.
Prints a JSON report, then a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import resource
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from benchmarks import baseline, langchain_baseline
from benchmarks.harness import (
    build_moa,
    critical_paths,
    median,
    percentile,
    question,
    server_lag,
    start_server,
)
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT

CALLS_PER_RUN = 4 * 2 + 1  # 4 proposers x 2 proposer layers + the aggregator


# -- latency and first token (sequential runs, interleaved) ---------------------------------------


def latency(runs: int) -> dict[str, Any]:
    """Each round runs every variant once, in turn, so all share the same machine state."""
    server = start_server(seed=1)
    try:
        moa = build_moa(server.base_url)
        chat_models = langchain_baseline.chat_models(server.base_url)
        api_holder: dict[str, Any] = {}
        loop = asyncio.new_event_loop()

        async def make_client() -> None:
            api_holder["api"] = baseline.client(server.base_url)

        loop.run_until_complete(make_client())
        api = api_holder["api"]

        async def astream_first_token(q: str) -> float:
            started = time.perf_counter()
            first = None
            async for chunk in moa.astream(q):
                if first is None and chunk.content:
                    first = time.perf_counter() - started
            return first if first is not None else float("nan")

        variants = {
            "moa_ainvoke": lambda q: loop.run_until_complete(moa.ainvoke(q)),
            "moa_invoke": lambda q: moa.invoke(q),
            "baseline": lambda q: loop.run_until_complete(baseline.run(api, q)),
            "langchain": lambda q: loop.run_until_complete(langchain_baseline.run(chat_models, q)),
        }
        streamers = {
            "moa_astream": lambda q: loop.run_until_complete(astream_first_token(q)),
            "baseline_stream": lambda q: loop.run_until_complete(baseline.run_streaming(api, q))[1],
        }
        for name, fn in {**variants, **streamers}.items():  # warm up: imports, pools, caches
            fn(question(f"warmup-{name}", 0))
        server.reset()
        walls: dict[str, dict[str, float]] = defaultdict(dict)
        firsts: dict[str, dict[str, float]] = defaultdict(dict)
        spans: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)  # epoch start, end
        for i in range(runs):
            for name, fn in variants.items():
                q = question(name, i)
                started, epoch = time.perf_counter(), time.time()
                fn(q)
                walls[name][q] = time.perf_counter() - started
                spans[name][q] = (epoch, time.time())
            for name, fn in streamers.items():
                q = question(name, i)
                started = time.perf_counter()
                firsts[name][q] = fn(q)
                walls[name][q] = time.perf_counter() - started
        records = server.requests()
        loop.run_until_complete(api.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    finally:
        server.stop()
    paths = critical_paths(records)
    out: dict[str, Any] = {"runs": runs, "server_lag": server_lag(records)}
    for name, by_q in walls.items():
        ratios = [wall / paths[q].ideal for q, wall in by_q.items()]
        out[name] = {
            "wall_ms_p50": round(median(list(by_q.values())) * 1000, 1),
            "ideal_ms_p50": round(median([paths[q].ideal for q in by_q]) * 1000, 1),
            "overhead_ms_p50": round(
                median([w - paths[q].ideal for q, w in by_q.items()]) * 1000, 1
            ),
            "wall_over_ideal_p50": round(median(ratios), 4),
            "wall_over_ideal_p90": round(percentile(ratios, 90), 4),
            "handoffs_ms_p50": [round(median([paths[q].handoffs[i] for q in by_q]) * 1000, 1)
                                for i in range(len(paths[next(iter(by_q))].handoffs))],
        }  # fmt: skip
        if name in spans:  # client and server share the clock: one machine
            out[name]["lead_in_ms_p50"] = round(
                median([paths[q].first_request - spans[name][q][0] for q in by_q]) * 1000, 1
            )
            out[name]["tail_ms_p50"] = round(
                median([spans[name][q][1] - paths[q].last_answer for q in by_q]) * 1000, 1
            )
    for name, by_q in firsts.items():
        ratios = [first / paths[q].ideal_first_token for q, first in by_q.items()]
        out[name].update({
            "first_token_ms_p50": round(median(list(by_q.values())) * 1000, 1),
            "ideal_first_token_ms_p50": round(
                median([paths[q].ideal_first_token for q in by_q]) * 1000, 1),
            "first_token_over_ideal_p50": round(median(ratios), 4),
            "first_token_over_ideal_p90": round(percentile(ratios, 90), 4),
        })  # fmt: skip
    base = out["baseline"]["wall_over_ideal_p50"]
    out["langchain_over_baseline"] = round(out["langchain"]["wall_over_ideal_p50"] / base, 4)
    out["moa_ainvoke_over_langchain"] = round(
        out["moa_ainvoke"]["wall_over_ideal_p50"] / out["langchain"]["wall_over_ideal_p50"], 4
    )
    out["moa_ainvoke_over_baseline"] = round(out["moa_ainvoke"]["wall_over_ideal_p50"] / base, 4)
    out["moa_invoke_over_baseline"] = round(out["moa_invoke"]["wall_over_ideal_p50"] / base, 4)
    out["moa_astream_first_token_over_baseline"] = round(
        out["moa_astream"]["first_token_over_ideal_p50"]
        / out["baseline_stream"]["first_token_over_ideal_p50"], 4)  # fmt: skip
    return out


# -- concurrency (one fresh child process per system) ------------------------------------------


def _worker(system: str, base_url: str, n: int, tag: str, profile: bool) -> dict[str, Any]:
    """Runs inside the child: ``n`` concurrent runs of ``system`` after one warm-up run."""
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def main() -> dict[str, Any]:
        if system == "moa":
            moa = build_moa(base_url)

            async def one(q: str) -> Any:
                return await moa.ainvoke(q)
        elif system == "langchain":
            models = langchain_baseline.chat_models(base_url)

            async def one(q: str) -> Any:
                return await langchain_baseline.run(models, q)
        else:
            api = baseline.client(base_url)

            async def one(q: str) -> Any:
                return await baseline.run(api, q)

        await one(question(f"{tag}-warmup", 0))
        rss_warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        profiler = cProfile.Profile() if profile else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        results = await asyncio.gather(
            *[one(question(tag, i)) for i in range(n)], return_exceptions=True
        )
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        out = {"wall_s": wall, "cpu_s": cpu, "failures": len(failures),
               "first_failure": failures[0] if failures else None,
               "rss_after_imports_mb": rss_imports / 1024, "rss_after_warmup_mb": rss_warm / 1024,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               }  # fmt: skip
        if profiler:
            out["profile"] = _profile_summary(profiler)
        return out

    return asyncio.run(main())


def _spawn(system: str, base_url: str, n: int, tag: str, profile: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.perf", "--worker", system, "--base-url", base_url,
           "--concurrency", str(n), "--tag", tag] + (["--profile"] if profile else [])  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {system} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def concurrency(n: int, repeats: int, profile: bool) -> dict[str, Any]:
    server = start_server(seed=2)
    try:
        results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in range(repeats):  # alternate the order: neither always runs first
            systems = ["moa", "baseline", "langchain"]  # rotated: none always runs first
            order = systems[r % 3 :] + systems[: r % 3]
            for system in order:
                server.reset()
                tag = f"conc-{system}-{r}"
                res = _spawn(system, server.base_url, n, tag, profile and r == 0)
                records = server.requests()
                paths = critical_paths(r_ for r_ in records if "warmup" not in str(r_.messages))
                res["ideal_s_p50"] = median([p.ideal for p in paths.values()])
                res["server_lag"] = server_lag(records)
                res["llm_calls"] = sum(p.requests for p in paths.values())
                results[system].append(res)
    finally:
        server.stop()

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        calls = runs[0]["llm_calls"] or n * CALLS_PER_RUN
        return {
            "wall_s_p50": round(median([x["wall_s"] for x in runs]), 3),
            "cpu_s_p50": round(median([x["cpu_s"] for x in runs]), 3),
            "cpu_ms_per_llm_call": round(median([x["cpu_s"] for x in runs]) / calls * 1000, 2),
            "llm_calls": calls,
            "ideal_critical_path_s_p50": round(median([x["ideal_s_p50"] for x in runs]), 3),
            "peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs), 1),
            "rss_after_warmup_mb": round(median([x["rss_after_warmup_mb"] for x in runs]), 1),
            "rss_growth_mb": round(
                median([x["peak_rss_mb"] - x["rss_after_warmup_mb"] for x in runs]), 1
            ),
            "failures": sum(x["failures"] for x in runs),
            "first_failure": next((x["first_failure"] for x in runs if x["first_failure"]), None),
            "server_lag_p99_ms": max(x["server_lag"].get("p99_ms", 0) for x in runs),
            "walls_s": [round(x["wall_s"], 3) for x in runs],
        }

    out: dict[str, Any] = {"concurrency": n, "repeats": repeats}
    for system in ("moa", "baseline", "langchain"):
        out[system] = summary(results[system])
    out["moa_wall_over_baseline"] = round(
        out["moa"]["wall_s_p50"] / out["baseline"]["wall_s_p50"], 3
    )
    out["moa_wall_over_langchain"] = round(
        out["moa"]["wall_s_p50"] / out["langchain"]["wall_s_p50"], 3
    )
    out["moa_cpu_over_baseline"] = round(
        out["moa"]["cpu_ms_per_llm_call"] / out["baseline"]["cpu_ms_per_llm_call"], 3
    )
    if profile:
        out["profile"] = {s: results[s][0].get("profile") for s in results}
    return out


def _profile_summary(profiler: cProfile.Profile, top: int = 25) -> dict[str, Any]:
    """Own (tottime) CPU by package, and the top functions by own and cumulative time."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    by_package: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, func), (_cc, calls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        by_package[_package(filename)] += tt
        rows.append((tt, ct, calls, f"{_short(filename)}:{line}({func})"))
    own = sorted(rows, reverse=True)[:top]
    cumulative = sorted(rows, key=lambda r: r[1], reverse=True)[:top]
    return {
        "total_own_s": round(total, 3),
        "own_by_package_pct": {
            k: round(100 * v / total, 1)
            for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
            if v / total > 0.005
        },
        "top_own": [f"{tt:.3f}s own {ct:.3f}s cum {n} calls {name}" for tt, ct, n, name in own],
        "top_cumulative": [f"{ct:.3f}s cum {n} calls {name}" for tt, ct, n, name in cumulative],
    }


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0].removesuffix(".py")
    if "/moa_graph/" in filename:
        return "moa_graph"
    if "/benchmarks/" in filename:
        return "benchmarks"
    if filename.startswith("<"):
        return "builtins"
    return "stdlib:" + filename.rsplit("/", 1)[-1].removesuffix(".py")


def _short(filename: str) -> str:
    for cut in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if cut in filename:
            return filename.split(cut)[1]
    return filename


# -- heavy tail: first_k against waiting for all -----------------------------------------------


def tail(runs: int, first_k: int, tail_probability: float, parallel: int) -> dict[str, Any]:
    server = start_server(seed=3, tail_probability=tail_probability)
    out: dict[str, Any] = {"runs": runs, "first_k": first_k, "of": 4,
                           "tail_probability": tail_probability, "tail_factor": 10.0,
                           "parallel_runs": parallel}  # fmt: skip
    # One event loop for both variants: langchain_openai caches its default async HTTP client
    # per base URL, bound to the loop that first used it.
    loop = asyncio.new_event_loop()
    try:
        for name, k in (("wait_all", None), (f"first_{first_k}", first_k)):
            moa = build_moa(server.base_url, first_k=k)

            async def main(moa: Any = moa, name: str = name) -> dict[str, float]:
                gate = asyncio.Semaphore(parallel)
                walls: dict[str, float] = {}

                async def one(i: int) -> None:
                    async with gate:
                        q = question(f"tail-{name}", i)
                        started = time.perf_counter()
                        await moa.ainvoke(q)
                        walls[q] = time.perf_counter() - started

                await asyncio.gather(*[one(i) for i in range(runs)])
                return walls

            loop.run_until_complete(moa.ainvoke(question(f"tail-warmup-{name}", 0)))
            server.reset()  # the same seeded latency draws for both variants
            walls = loop.run_until_complete(main())
            records = server.requests()
            paths = critical_paths(records, first_k=k)
            values = list(walls.values())
            ideal = [paths[q].ideal for q in walls]
            out[name] = {
                **{f"p{q}_ms": round(percentile(values, q) * 1000, 1) for q in (50, 90, 99)},
                **{f"ideal_p{q}_ms": round(percentile(ideal, q) * 1000, 1) for q in (50, 90, 99)},
                "tail_calls": sum(r.tail for r in records),
                "cancelled_calls": sum(
                    r.outcome in ("client_disconnected", "cancelled") for r in records
                ),
            }
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        server.stop()
    cut = 1 - out[f"first_{first_k}"]["p99_ms"] / out["wait_all"]["p99_ms"]
    out["p99_cut_pct"] = round(100 * cut, 1)
    return out


# -- report -------------------------------------------------------------------------------------


def markdown(report: dict[str, Any], command: str) -> str:
    lat, conc, tl = report.get("latency"), report.get("concurrency"), report.get("tail")
    rows = ["| measure | target | measured | met |", "|---|---|---|---|"]

    def row(label: str, target: str, value: str, ok: bool) -> None:
        rows.append(f"| {label} | {target} | {value} | {'yes' if ok else 'no'} |")

    if lat:
        for name in ("moa_ainvoke", "moa_invoke"):
            r = lat[name]
            row(f"`{name.split('_')[1]}` wall / ideal critical path (p50 of {lat['runs']})",
                "<= 1.05", f"{r['wall_over_ideal_p50']:.3f} ({r['wall_ms_p50']:.0f} ms vs "
                f"{r['ideal_ms_p50']:.0f} ms)", r["wall_over_ideal_p50"] <= 1.05)  # fmt: skip
        for name, label in (
            ("baseline", "asyncio+openai baseline"),
            ("langchain", "asyncio+`ChatOpenAI` (no graph)"),
        ):
            b = lat[name]
            rows.append(
                f"| {label} wall / ideal | (reference) | "
                f"{b['wall_over_ideal_p50']:.3f} ({b['wall_ms_p50']:.0f} ms) | |"
            )
        for name in ("ainvoke", "invoke"):
            v = lat[f"moa_{name}_over_baseline"]
            row(f"moa_graph `{name}` / baseline", "<= 1.05", f"{v:.3f}", v <= 1.05)
        rows.append(f"| split of `ainvoke` / baseline: `ChatOpenAI` / baseline x moa_graph / "
                    f"`ChatOpenAI` | (report) | {lat['langchain_over_baseline']:.3f} x "
                    f"{lat['moa_ainvoke_over_langchain']:.3f} | |")  # fmt: skip
        gaps = " / ".join(
            f"{name}: {lat[name]['lead_in_ms_p50']:.1f}, "
            + " + ".join(f"{gap:.1f}" for gap in lat[name]["handoffs_ms_p50"])
            + f", {lat[name]['tail_ms_p50']:.1f}"
            for name in ("moa_ainvoke", "moa_invoke", "langchain", "baseline")
        )
        rows.append(f"| where the overhead sits (ms, p50): call to first request; hand-offs "
                    f"layer 1->2 + 2->aggregator (last answer to next request); last answer to "
                    f"return | (report) | {gaps} | |")  # fmt: skip
        s = lat["moa_astream"]
        row("`astream` first token / (path to aggregator + its TTFT)", "<= 1.05",
            f"{s['first_token_over_ideal_p50']:.3f} ({s['first_token_ms_p50']:.0f} ms vs "
            f"{s['ideal_first_token_ms_p50']:.0f} ms); baseline "
            f"{lat['baseline_stream']['first_token_over_ideal_p50']:.3f}",
            s["first_token_over_ideal_p50"] <= 1.05)  # fmt: skip
    if conc:
        m, b = conc["moa"], conc["baseline"]
        lc = conc["langchain"]
        row(f"{conc['concurrency']} concurrent runs: moa_graph wall / baseline wall", "<= 1.35",
            f"{conc['moa_wall_over_baseline']:.2f} ({m['wall_s_p50']:.2f} s vs "
            f"{b['wall_s_p50']:.2f} s; ideal path {m['ideal_critical_path_s_p50']:.2f} s)",
            conc["moa_wall_over_baseline"] <= 1.35)  # fmt: skip
        rows.append(f"| the same with `ChatOpenAI` and no graph: its wall / baseline, moa_graph / "
                    f"it | (report) | {lc['wall_s_p50'] / b['wall_s_p50']:.2f}, "
                    f"{conc['moa_wall_over_langchain']:.2f} ({lc['wall_s_p50']:.2f} s; CPU per "
                    f"LLM call {lc['cpu_ms_per_llm_call']:.1f} ms) | |")  # fmt: skip
        rows.append(f"| CPU per LLM call: moa_graph / baseline | (report) | "
                    f"{m['cpu_ms_per_llm_call']:.1f} ms / {b['cpu_ms_per_llm_call']:.1f} ms "
                    f"({conc['moa_cpu_over_baseline']:.2f}x) | |")  # fmt: skip
        rows.append(f"| peak RSS: moa_graph / baseline | (report) | {m['peak_rss_mb']:.0f} MB "
                    f"(+{m['rss_growth_mb']:.0f} MB during the runs) / {b['peak_rss_mb']:.0f} MB "
                    f"(+{b['rss_growth_mb']:.0f} MB) | |")  # fmt: skip
    if tl:
        k = f"first_{tl['first_k']}"
        w, f = tl["wait_all"], tl[k]
        row(f"heavy tail ({tl['runs']} seeded runs, {tl['tail_probability']:.0%} of calls 10x): "
            f"p99 cut by `first_k={tl['first_k']}` of 4", ">= 40%",
            f"{tl['p99_cut_pct']:.1f}% (p50/p90/p99 {w['p50_ms']:.0f}/{w['p90_ms']:.0f}/"
            f"{w['p99_ms']:.0f} ms -> {f['p50_ms']:.0f}/{f['p90_ms']:.0f}/{f['p99_ms']:.0f} ms)",
            tl["p99_cut_pct"] >= 40)  # fmt: skip
    return f"Measured with `{command}` (ratios side by side in one run):\n\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, 50 concurrent")
    parser.add_argument("--runs", type=int, default=None, help="sequential runs per variant")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="concurrency repeats")
    parser.add_argument("--tail-runs", type=int, default=None)
    parser.add_argument("--first-k", type=int, default=3)
    parser.add_argument("--tail-parallel", type=int, default=2, help="runs in flight at once")
    parser.add_argument("--tail-probability", type=float, default=0.02)
    parser.add_argument("--only", choices=["latency", "concurrency", "tail"], action="append")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--worker", choices=["moa", "baseline", "langchain"], help=argparse.SUPPRESS
    )
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = _worker(args.worker, args.base_url, args.concurrency, args.tag, args.profile)
        print(json.dumps(result))
        return
    assert AGGREGATE_AND_SYNTHESIZE_PROMPT == baseline.AGGREGATE_AND_SYNTHESIZE_PROMPT
    runs = args.runs or (8 if args.quick else 30)
    conc = args.concurrency or (50 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 2)
    tail_runs = args.tail_runs or (60 if args.quick else 200)
    only = set(args.only or ["latency", "concurrency", "tail"])
    report: dict[str, Any] = {"command": "python -m benchmarks.perf " + " ".join(sys.argv[1:])}
    if "latency" in only:
        report["latency"] = latency(runs)
    if "concurrency" in only:
        report["concurrency"] = concurrency(conc, repeats, args.profile)
    if "tail" in only:
        report["tail"] = tail(
            tail_runs, args.first_k, args.tail_probability, parallel=args.tail_parallel
        )
    print(json.dumps(report, indent=2))
    print()
    print(markdown(report, report["command"].strip()))


if __name__ == "__main__":
    main()
