"""moa_graph: Mixture-of-Agents (arXiv 2406.04692) for LangGraph and LangChain.

Example:
    >>> from moa_graph import ChatMixtureOfAgents, presets
    >>> moa = presets.moa_lite().chat_model  # a ChatMixtureOfAgents factory (needs a Together key)
"""

from importlib.metadata import PackageNotFoundError, version

from moa_graph import presets
from moa_graph.aggregator import create_aggregator
from moa_graph.chat_model import ChatMixtureOfAgents
from moa_graph.engine.graph import MoAContext, create_moa_graph
from moa_graph.errors import AggregatorError, MoAError, ProposalsFailedError, ThreadInUseError
from moa_graph.models import ProposerSpec
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT, inject_references
from moa_graph.state import MoAInput, MoAOutput, MoAState, Proposal
from moa_graph.strategies.base import Strategy
from moa_graph.subgraph import as_node

__all__ = [
    "AGGREGATE_AND_SYNTHESIZE_PROMPT",
    "AggregatorError",
    "ChatMixtureOfAgents",
    "MoAContext",
    "MoAError",
    "MoAInput",
    "MoAOutput",
    "MoAState",
    "Proposal",
    "ProposalsFailedError",
    "ProposerSpec",
    "Strategy",
    "ThreadInUseError",
    "as_node",
    "create_aggregator",
    "create_moa_graph",
    "inject_references",
    "presets",
]
try:  # written once, in pyproject.toml
    __version__ = version("moa-graph")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
