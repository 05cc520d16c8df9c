"""Images in chat requests: which models may receive them, loading them, and where they go.

A chat request's ``image_url`` parts are checked when the job is prepared (a text-only model
gets a 400 that names the models that can see), then loaded by :mod:`mlx_router.media` off the
event loop, awaited while the chat job is prepared, before generation starts. Each part becomes as many image
placeholders as it produced images (one for a picture, one per rendered page for a PDF), at its
position among the text parts; the model's processor turns each placeholder into the image's
tokens. What the loaders had to leave out (PDF pages beyond the limit, say) reaches the client
in the ``X-MLX-Router-Warnings`` response header, a JSON array of strings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from mlx_router.config.settings import Settings
from mlx_router.errors import InvalidRequest
from mlx_router.manager.registry import ModelEntry
from mlx_router.media import load_images
from mlx_router.media.limits import MediaLimits
from mlx_router.protocol.chat import ChatCompletionRequest, ImagePart, TextPart

__all__ = ["WARNINGS_HEADER", "LoadedImages", "load_request_images", "refuse_images", "warnings_header"]

logger = logging.getLogger(__name__)

WARNINGS_HEADER = "X-MLX-Router-Warnings"
IMAGE_PLACEHOLDER: dict[str, Any] = {"type": "image"}
"""An image's place in a message's content, as mlx-vlm and the vision chat templates expect."""


def _image_parts(req: ChatCompletionRequest) -> list[tuple[int, int, ImagePart]]:
    """(message index, part index, part) of every image part, in order."""
    return [
        (i, j, part)
        for i, message in enumerate(req.messages)
        if isinstance(message.content, list)
        for j, part in enumerate(message.content)
        if isinstance(part, ImagePart)
    ]


def refuse_images(req: ChatCompletionRequest, entry: ModelEntry, entries: dict[str, ModelEntry]) -> None:
    """400 for images the model cannot take: a text-only model (the message names the models
    that can see), or images outside user messages (chat templates place them in user turns)."""
    parts = _image_parts(req)
    if not parts:
        return
    i, j, _ = parts[0]
    if not entry.supports_vision:
        seeing = sorted(model_id for model_id, e in entries.items() if e.supports_vision)
        which = (
            f"Models that accept images: {', '.join(seeing)}."
            if seeing
            else "No model on this server accepts images."
        )
        raise InvalidRequest(
            f"Model {entry.id!r} cannot read images: it is not a vision model (supports_vision). {which}",
            param=f"messages[{i}].content[{j}]",
            code="model_not_vision_capable",
        )
    for i, j, _ in parts:
        if req.messages[i].role != "user":
            raise InvalidRequest(
                f"Images are accepted in user messages only; message {i} has the role {req.messages[i].role!r}.",
                param=f"messages[{i}].content[{j}]",
            )


@dataclass(frozen=True)
class LoadedImages:
    """A request's images, loaded, and where they go in its messages."""

    contents: dict[int, list[dict[str, Any]]]
    """For each message with images: its content as the template gets it (text parts and one
    placeholder per image)."""
    images: tuple[bytes, ...]
    """PNG images in placeholder order."""
    warnings: tuple[str, ...]
    """What the loaders had to leave out."""

    def messages(self, messages: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        """``messages`` (the template's dicts) with the placeholders in the image messages."""
        return tuple(
            {**message, "content": self.contents[i]} if i in self.contents else message
            for i, message in enumerate(messages)
        )


async def load_request_images(req: ChatCompletionRequest, settings: Settings) -> LoadedImages | None:
    """Load the request's images (None when it has none), with a placeholder per image where
    its part was."""
    parts = _image_parts(req)
    if not parts:
        return None
    urls = [(f"messages[{i}].content[{j}].image_url", part.image_url.url) for i, j, part in parts]
    low = frozenset(param for (param, _), (_, _, part) in zip(urls, parts) if part.image_url.detail == "low")
    batch = await load_images(urls, MediaLimits.from_settings(settings), low)
    counts = dict(zip(((i, j) for i, j, _ in parts), batch.counts))
    contents: dict[int, list[dict[str, Any]]] = {}
    for i in sorted({i for i, _, _ in parts}):
        content: list[dict[str, Any]] = []
        for j, part in enumerate(req.messages[i].content or []):
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            else:
                content.extend(dict(IMAGE_PLACEHOLDER) for _ in range(counts[(i, j)]))
        contents[i] = content
    for warning in batch.warnings:
        logger.info("Media warning: %s", warning)
    return LoadedImages(contents, tuple(batch.images), tuple(batch.warnings))


def warnings_header(warnings: tuple[str, ...]) -> dict[str, str]:
    """The response header carrying ``warnings`` (none when there are none)."""
    return {WARNINGS_HEADER: json.dumps(list(warnings))} if warnings else {}
