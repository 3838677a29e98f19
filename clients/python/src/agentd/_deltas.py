"""Iterating the text of a job as the model produces it (``SubmitJobRequest.stream_deltas``)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from agentd.v1.job_pb2 import JobEvent


def _delta(event: JobEvent, thinking: bool) -> str | None:
    kind = event.WhichOneof("kind")
    if kind == ("thinking_delta" if thinking else "text_delta"):
        return event.thinking_delta.text if thinking else event.text_delta.text
    return None


def text_deltas(events: Iterable[JobEvent], *, thinking: bool = False) -> Iterator[str]:
    """Yields each ``text_delta`` piece (``thinking_delta`` with ``thinking=True``) of a job's
    events, e.g. of ``client.run(...)``; the pieces of a block concatenate to its ``text`` event.
    """
    for event in events:
        piece = _delta(event, thinking)
        if piece is not None:
            yield piece


async def atext_deltas(events: AsyncIterable[JobEvent], *, thinking: bool = False) -> AsyncIterator[str]:
    """``text_deltas`` for an async event stream (``AsyncClient.run(...)``)."""
    async for event in events:
        piece = _delta(event, thinking)
        if piece is not None:
            yield piece
