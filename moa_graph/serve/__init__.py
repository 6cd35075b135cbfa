"""Serving a mixture.

- ``openai_app``: ``moa-graph serve``, an OpenAI-compatible endpoint (Starlette and uvicorn);
  ``openai_requests`` and ``openai_wire`` read its requests and write its answers;
- ``langserve_app``: LangServe routes (needs ``requirements/langserve.txt``);
- ``langgraph_app``: the graph LangGraph Server loads (``langgraph.json``).

Each is imported on its own: the server stacks need different packages.
"""
