"""Serve a mixture with LangServe and call it with ``RemoteRunnable``.

Needs the LangServe stack: ``pip install -e . -r requirements/langserve.txt`` (``make
test-langserve`` builds it in ``.venv-langserve``). By default this script starts the server
on a free loopback port, asks the served mixture through ``RemoteRunnable`` (invoke, then
stream), and stops. With ``--serve`` it serves until interrupted::

    .venv-langserve/bin/python examples/langserve_app.py --preset local-tiny --serve --port 8000

and any environment with ``langserve[client]`` can then call it::

    from langserve import RemoteRunnable
    moa = RemoteRunnable("http://127.0.0.1:8000/moa/")
    moa.invoke("What are 3 fun things to do in SF?").content

Clients cannot change the models, endpoints or keys: a request carrying
``config={"configurable": ...}`` is refused with HTTP 422.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

from moa_graph.presets import PRESETS, Recipe, get_preset, load_recipe

QUESTION = "Name one fun thing to do in San Francisco."


def main() -> int:
    """Serve the chosen recipe (``--serve``) or run the round trip once."""
    parser = argparse.ArgumentParser(description="Serve a mixture with LangServe.")
    parser.add_argument("--preset", default="local-tiny", choices=sorted(PRESETS))
    parser.add_argument("--config", help="a TOML recipe instead of a preset")
    parser.add_argument("--serve", action="store_true", help="serve until interrupted")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        import uvicorn
        from langserve import RemoteRunnable

        from moa_graph.serve.langserve_app import create_app
    except ImportError as missing:
        print(f"LangServe is not installed here ({missing.name}): run this example with "
              "`pip install -e . -r requirements/langserve.txt` (or .venv-langserve).")  # fmt: skip
        return 0
    recipe: Recipe = load_recipe(args.config) if args.config else get_preset(args.preset)
    app = create_app(recipe.chat_model())
    if args.serve:
        uvicorn.run(app, host=args.host, port=args.port)
        return 0

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        moa = RemoteRunnable(f"http://127.0.0.1:{sock.getsockname()[1]}/moa/")
        answer = moa.invoke(QUESTION)
        print("invoke:", answer.content)
        print("proposals:", [p["status"] for p in answer.response_metadata["proposals"]])
        print("stream: ", end="")
        for chunk in moa.stream(QUESTION):
            print(chunk.content, end="", flush=True)
        print()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
