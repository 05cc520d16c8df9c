"""Model aliases (``aliases`` in config.json): exact names and glob patterns for every endpoint,
validated against the served models, shown in the listing, applied by a reload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlx_router.config.settings import ConfigError, Settings
from mlx_router.manager.aliases import Aliases
from tests.fakes import MODEL, assert_error, chat_body
from tests.openai_schemas import validate

CHAT = "/v1/chat/completions"
ALIASES = {"gpt-4o": MODEL, "claude-*": MODEL, "claude-3-5-haiku-*": MODEL}


def test_exact_names_win_over_patterns_and_patterns_go_in_file_order() -> None:
    aliases = Aliases.from_config({"claude-*": "big", "claude-haiku-*": "small", "claude-haiku-4": "exact"})
    assert aliases.match("claude-haiku-4") == ("claude-haiku-4", "exact")
    assert aliases.match("claude-haiku-5") == ("claude-*", "big")  # the first pattern that matches
    assert aliases.match("Claude-opus") is None  # case-sensitive
    assert aliases.match("claude") is None
    assert aliases.names_for("big") == ["claude-*"]


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"claude-*": "missing"}, "aliases.claude-*: the target 'missing' is not a served model"),
        ({MODEL: MODEL}, f"aliases.{MODEL}: '{MODEL}' is already a model id"),
    ],
)
def test_a_bad_alias_names_its_key(aliases: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        Aliases.from_config(aliases).check({MODEL})


@pytest.mark.parametrize("aliases", [{"": MODEL}, {" padded": MODEL}, {"x": ""}, {"x": 3}])
def test_alias_keys_and_targets_are_checked_when_the_file_is_read(aliases: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="aliases"):
        Settings.model_validate({"aliases": aliases})


async def test_aliases_route_requests_to_their_model(make_app: Any) -> None:
    harness = await make_app(aliases=ALIASES)
    for name in ("gpt-4o", "claude-sonnet-4-5-20250929", "claude-3-5-haiku-20241022"):
        response = await harness.client.post(CHAT, json=chat_body(model=name))
        assert response.status_code == 200, response.text
        assert response.json()["model"] == MODEL
    assert harness.factory.calls == 1  # one model, loaded once
    assert {c.options.model_id for c in harness.factory.clients} == {MODEL}
    assert_error(await harness.client.post(CHAT, json=chat_body(model="gpt-4o-mini")), 404, code="model_not_found")


async def test_the_listing_shows_exact_aliases_and_each_models_aliases(make_app: Any) -> None:
    harness = await make_app(aliases=ALIASES)
    body = (await harness.client.get("/v1/models")).json()
    validate(body, "ListModelsResponse")
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == {MODEL, "gpt-4o"}  # patterns are not ids: they show on their model
    assert cards[MODEL]["aliases"] == ["gpt-4o", "claude-*", "claude-3-5-haiku-*"]
    assert cards[MODEL]["alias_of"] is None
    assert cards["gpt-4o"]["alias_of"] == MODEL and cards["gpt-4o"]["aliases"] == []
    one = (await harness.client.get("/v1/models/claude-opus-4")).json()
    validate(one, "Model")
    assert one["id"] == "claude-opus-4" and one["alias_of"] == MODEL
    assert (await harness.client.post("/v1/admin/models/gpt-4o/load")).json()["id"] == MODEL


async def test_an_alias_to_an_unknown_model_stops_the_start(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="aliases.claude-\\*"):
        await make_app(aliases={"claude-*": "no-such-model"})


async def test_a_reload_applies_aliases_and_refuses_bad_ones(make_app: Any, tmp_path: Path, tiny_models_root: Path) -> None:
    config = tmp_path / "config.json"

    def write(aliases: dict[str, str]) -> None:
        config.write_text(json.dumps({
            "defaults": {"model_directory": str(tiny_models_root), "embedded_model": False},
            "server": {"log_file": None},
            "aliases": aliases,
        }))

    from mlx_router.config.settings import load_settings

    write({"gpt-4o": MODEL})
    harness = await make_app(reload_settings=lambda: load_settings(config, environ={}))
    assert (await harness.client.post(CHAT, json=chat_body(model="gpt-4o"))).status_code == 200
    write({"claude-*": MODEL})
    assert (await harness.client.post("/v1/admin/reload")).status_code == 200
    assert (await harness.client.post(CHAT, json=chat_body(model="claude-haiku"))).status_code == 200
    assert_error(await harness.client.post(CHAT, json=chat_body(model="gpt-4o")), 404, code="model_not_found")
    write({"claude-*": "gone"})
    assert_error(await harness.client.post("/v1/admin/reload"), 400, code="invalid_config", message_contains=["aliases.claude-*"])
    assert (await harness.client.post(CHAT, json=chat_body(model="claude-haiku"))).status_code == 200  # nothing applied
