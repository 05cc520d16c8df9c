"""Serving: one module per generating endpoint on one shared runner.

``runner.py`` runs prepared jobs (fan-in of choices, time limits, keep-alives, drain state) and
documents how an endpoint module builds a job, runs it and converts its events; ``answer.py``
reads a choice's text (reasoning apart, then tool calls); ``sampling.py`` is what the OpenAI chat
and completions requests prepare alike; ``chat.py`` and ``completions.py`` are the endpoints;
``messages.py`` (Anthropic Messages) and ``responses.py`` (OpenAI Responses) translate their APIs
onto the chat preparation through ``chat_bridge.py``; ``embeddings.py`` runs embedding requests on
the runner's manager, settings, metrics and drain state (they generate nothing: no choices, no
chunks). Wire shapes and pure converters live in ``protocol/``.
"""

from mlx_router.api.serving.runner import STOPPED_HEADER, DrainState, Job, Run, Runner

__all__ = ["STOPPED_HEADER", "DrainState", "Job", "Run", "Runner"]
