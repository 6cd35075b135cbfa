"""The engine: the LangGraph graph that runs a mixture.

- ``graph``: ``create_moa_graph`` and the wiring of the nodes;
- ``nodes``: what each node does (prepare, propose, collect a layer, aggregate);
- ``scope``: a mixture's shared parts and the per-run scope (the run's plan, races, limiter);
- ``plan``: the validated shape of a mixture, ``run_choices``: its per-run narrowing;
- ``proposer_call`` / ``final_answer``: one proposer's call, the final answer's call(s);
- ``staircase`` / ``staircase_run``: staircase streaming's rounds, and one run of it;
- ``runner``: the one call runner every step's body is driven by (sync and async);
- ``calls`` (deadlines, retries), ``race`` (straggler cut-off), ``limits``, ``sample_batch``
  (samples drawn in one request), ``shared_by_calls``, ``references`` (token budget),
  ``events`` (progress events, trace labels), ``token_streaming`` (which calls stream).

The aggregation strategies it runs are ``moa_graph.strategies``, below it.

Nothing is imported here, so that importing one part (the plan, say) does not
load the rest.
"""
