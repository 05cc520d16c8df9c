"""Volatile billing-header lines are blanked so identical prompts share their cached prefix."""

from __future__ import annotations

from mlx_router.engine.batch import canonicalize_messages


def test_billing_header_value_is_blanked_in_system_prompts_only() -> None:
    first = (
        {"role": "system", "content": "x-anthropic-billing-header: cc_version=1.2; req=abc123\nYou are helpful."},
        {"role": "user", "content": "x-anthropic-billing-header: keep me"},
    )
    second = ({**first[0], "content": "x-anthropic-billing-header: cc_version=1.2; req=zzz999\nYou are helpful."}, first[1])
    one, two = canonicalize_messages(first), canonicalize_messages(second)
    assert one == two
    assert one[0]["content"] == "x-anthropic-billing-header:\nYou are helpful."
    assert one[1] == first[1]  # user text is never rewritten


def test_messages_without_the_header_are_returned_as_they_are() -> None:
    messages = ({"role": "system", "content": "Plain."}, {"role": "user", "content": "Hi"})
    assert canonicalize_messages(messages) == messages
