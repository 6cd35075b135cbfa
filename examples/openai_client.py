"""A mixture of agents is itself an OpenAI-compatible model: ask it with the ``openai`` client.

Serves the embedded ``local-tiny`` mixture (two SmolLM2-135M samples aggregated by SmolLM2, no
API key, offline) on a free loopback port in a background thread, then streams an answer through
the official ``openai`` client. From a shell, ``moa-graph serve --preset local-tiny`` does the
same for any OpenAI client or tool.

Run:
    python examples/openai_client.py "Why is the sky blue?"
"""

from __future__ import annotations

import sys

import openai

from moa_graph.presets import local_tiny
from moa_graph.serve.openai_app import MoAServer

API_KEY = "local-demo-key"  # the served endpoint's own key, not a provider's


def main(question: str) -> None:
    """Serve ``local-tiny``, ask ``question`` with the ``openai`` client, print the stream."""
    moa = local_tiny().chat_model()
    with MoAServer(moa, model_name="moa-local-tiny", api_key=API_KEY) as server:
        print(f"serving {server.model_name!r} at {server.base_url}", file=sys.stderr)
        with openai.OpenAI(base_url=server.base_url, api_key=API_KEY) as client:
            print("models:", [m.id for m in client.models.list()], file=sys.stderr)
            stream = client.chat.completions.create(
                model=server.model_name,
                messages=[{"role": "user", "content": question}],
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    print(chunk.choices[0].delta.content, end="", flush=True)
                if chunk.usage is not None:
                    print(f"\n[{chunk.usage.total_tokens} tokens in all calls]", file=sys.stderr)
        print()


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "What are 3 fun things to do in San Francisco?")
