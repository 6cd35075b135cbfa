"""Model calls that must not stream token by token, though a caller streams the graph's messages.

LangGraph's ``stream_mode="messages"`` attaches a handler that makes every chat model call under
it stream. Two kinds of call are better off without: a proposer whose tokens nobody reads (it
would pay for streaming on the critical path) and a request for several answers (``n``), whose
streamed chunks LangChain would merge into one answer.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager, CallbackManager

# LangGraph's ``stream_mode="messages"`` handler class: the only way to tell it from the
# caller's handlers (no public name exists).
from langchain_core.tracers._streaming import _StreamingCallbackHandler


def makes_calls_stream(callbacks: Any) -> bool:
    """Whether ``callbacks`` (a manager, a list or none) hold a handler that makes chat model
    calls stream token by token (LangGraph's ``stream_mode="messages"``)."""
    if isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.handlers + callbacks.inheritable_handlers
    return any(isinstance(h, _StreamingCallbackHandler) for h in callbacks or [])


def without_token_streaming(callbacks: Any) -> Any:
    """A copy of a config's callbacks (a manager, a list or none) without the handlers that
    make chat models stream."""
    if isinstance(callbacks, list):
        return _non_streaming(callbacks)
    if not isinstance(callbacks, BaseCallbackManager) or not makes_calls_stream(callbacks):
        return callbacks
    manager = callbacks.copy()
    manager.handlers = _non_streaming(manager.handlers)
    manager.inheritable_handlers = _non_streaming(manager.inheritable_handlers)
    return manager


def _non_streaming(handlers: list[BaseCallbackHandler]) -> list[BaseCallbackHandler]:
    return [h for h in handlers if not isinstance(h, _StreamingCallbackHandler)]


def with_handler(callbacks: Any, handler: BaseCallbackHandler) -> BaseCallbackManager:
    """A copy of a config's callbacks (a manager, a list or none) with ``handler`` added, inherited
    by the calls under it.

    Example:
        >>> manager = with_handler(None, BaseCallbackHandler())
        >>> len(manager.handlers), len(manager.inheritable_handlers)
        (1, 1)
    """
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
    else:
        manager = CallbackManager(handlers=[], inheritable_handlers=[])
        for existing in callbacks or []:
            manager.add_handler(existing, inherit=True)
    manager.add_handler(handler, inherit=True)
    return manager
