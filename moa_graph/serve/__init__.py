"""Serving a mixture.

- ``openai_app``: ``moa-graph serve``, an OpenAI-compatible endpoint (Starlette and uvicorn);
  ``openai_requests`` and ``openai_wire`` read its requests and write its answers, ``guards``
  bounds what a client may send;
- ``runner`` and ``asgi``: uvicorn on a thread and ASGI helpers, shared with the scripted test
  server of ``moa_graph.testing`` (they import no LangChain);
- ``langserve_app``: LangServe routes (needs ``requirements/langserve.txt``);
- ``langgraph_app``: the graph LangGraph Server loads (``langgraph.json``).

Each is imported on its own: the server stacks need different packages.
"""
