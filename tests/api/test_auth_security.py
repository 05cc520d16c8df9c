"""API key, Host allow-list and CORS, as the app enforces them in front of every route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes import assert_error, chat_body

CHAT = "/v1/chat/completions"
KEY = "sk-test-0123456789abcdef"
ORIGIN = "http://app.example"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --------------------------------------------------------------------------- API key


@pytest.fixture
async def keyed(make_app: Any) -> Any:
    return await make_app(server={"api_key": KEY})


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", CHAT), ("GET", "/v1/health"), ("GET", "/v1/models/tiny-llama")],
)
async def test_no_key_is_401(keyed: Any, method: str, path: str) -> None:
    response = await keyed.client.request(method, path, json=chat_body() if method == "POST" else None)
    assert_error(response, 401, code="invalid_api_key", error_type="authentication_error", param=None)
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert KEY not in response.text
    assert keyed.factory.calls == 0


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        "Bearer ",
        "Bearer",
        f"Basic {KEY}",
        KEY,
        f"Token {KEY}",
        f"Bearer {KEY.upper()}",
        "Bearer sk-something-else-entirely-much-longer-than-the-real-key",
    ],
)
async def test_wrong_key_is_401(keyed: Any, authorization: str) -> None:
    response = await keyed.client.get("/v1/models", headers={"Authorization": authorization})
    assert_error(response, 401, code="invalid_api_key")
    assert KEY not in response.text


async def test_right_key_is_200(keyed: Any) -> None:
    response = await keyed.client.get("/v1/models", headers=bearer(KEY))
    assert response.status_code == 200, response.text
    response = await keyed.client.post(CHAT, json=chat_body(), headers=bearer(KEY))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello, world!"


async def test_bearer_scheme_is_case_insensitive(keyed: Any) -> None:
    response = await keyed.client.get("/v1/models", headers={"Authorization": f"bearer {KEY}"})
    assert response.status_code == 200, response.text


async def test_health_is_open_without_key(keyed: Any) -> None:
    response = await keyed.client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    # ... but the detailed health is not.
    assert_error(await keyed.client.get("/v1/health"), 401, code="invalid_api_key")


async def test_unknown_route_without_key_is_401_not_404(keyed: Any) -> None:
    """Without the key, a stranger learns nothing about which routes exist."""
    assert_error(await keyed.client.get("/v1/secret-admin"), 401, code="invalid_api_key")
    assert_error(await keyed.client.get("/openapi.json"), 401, code="invalid_api_key")


async def test_api_key_file(make_app: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{KEY}\nsecond line is ignored\n", encoding="utf-8")
    harness = await make_app(server={"api_key_file": str(key_file)})
    assert_error(await harness.client.get("/v1/models"), 401, code="invalid_api_key")
    assert_error(
        await harness.client.get("/v1/models", headers=bearer("second line is ignored")), 401, code="invalid_api_key"
    )
    response = await harness.client.get("/v1/models", headers=bearer(KEY))
    assert response.status_code == 200, response.text


async def test_api_key_wins_over_file(make_app: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "key.txt"
    key_file.write_text("from-the-file\n", encoding="utf-8")
    harness = await make_app(server={"api_key": KEY, "api_key_file": str(key_file)})
    assert (await harness.client.get("/v1/models", headers=bearer(KEY))).status_code == 200
    assert_error(await harness.client.get("/v1/models", headers=bearer("from-the-file")), 401)


async def test_no_key_configured_means_open_on_loopback(harness: Any) -> None:
    response = await harness.client.get("/v1/models")
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- Host allow-list


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8800", "localhost.evil.example", "127.0.0.1.nip.io", "10.0.0.5:8800", "0.0.0.0"],
)
async def test_foreign_host_rejected_on_loopback_bind(harness: Any, host: str) -> None:
    response = await harness.client.get("/v1/models", headers={"Host": host})
    assert_error(response, 400, code="host_not_allowed", param=None)
    response = await harness.client.post(CHAT, json=chat_body(), headers={"Host": host})
    assert_error(response, 400, code="host_not_allowed")
    assert harness.factory.calls == 0


async def test_foreign_host_rejected_even_with_the_right_key(keyed: Any) -> None:
    response = await keyed.client.get("/v1/models", headers={"Host": "evil.example", **bearer(KEY)})
    assert_error(response, 400, code="host_not_allowed")


async def test_foreign_host_rejected_on_open_health_too(harness: Any) -> None:
    assert_error(await harness.client.get("/health", headers={"Host": "evil.example"}), 400, code="host_not_allowed")


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8800", "LOCALHOST:8800", "127.0.0.1", "127.0.0.1:8800", "[::1]:8800", "[::1]"]
)
async def test_loopback_hosts_accepted(harness: Any, host: str) -> None:
    response = await harness.client.get("/v1/models", headers={"Host": host})
    assert response.status_code == 200, response.text


async def test_any_host_accepted_on_non_loopback_bind(make_app: Any) -> None:
    harness = await make_app(server={"ip": "0.0.0.0", "api_key": KEY})
    response = await harness.client.get("/v1/models", headers={"Host": "myserver.lan:8800", **bearer(KEY)})
    assert response.status_code == 200, response.text
    assert_error(await harness.client.get("/v1/models", headers={"Host": "myserver.lan"}), 401)


async def test_explicit_allowed_hosts(make_app: Any) -> None:
    harness = await make_app(server={"allowed_hosts": ["router.lan"]})
    assert (await harness.client.get("/v1/models", headers={"Host": "router.lan:8800"})).status_code == 200
    assert_error(await harness.client.get("/v1/models", headers={"Host": "evil.example"}), 400, code="host_not_allowed")
    # The explicit list replaces the loopback names.
    assert_error(await harness.client.get("/v1/models"), 400, code="host_not_allowed")


# --------------------------------------------------------------------------- CORS


async def test_cors_off_by_default(harness: Any) -> None:
    response = await harness.client.get("/v1/models", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    response = await harness.client.post(CHAT, json=chat_body(), headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_cors_preflight_not_answered_when_off(harness: Any) -> None:
    response = await harness.client.options(
        CHAT, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in response.headers
    assert response.status_code == 405
    assert_error(response, 405, code="method_not_allowed")


@pytest.fixture
async def cors(make_app: Any) -> Any:
    return await make_app(server={"cors_origins": [ORIGIN], "api_key": KEY})


async def test_cors_allows_listed_origin_only(cors: Any) -> None:
    response = await cors.client.get("/v1/models", headers={"Origin": ORIGIN, **bearer(KEY)})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in response.headers

    response = await cors.client.get("/v1/models", headers={"Origin": "http://evil.example", **bearer(KEY)})
    assert "access-control-allow-origin" not in response.headers
    assert response.headers.get("access-control-allow-origin") != "*"


async def test_cors_preflight_works_without_api_key(cors: Any) -> None:
    response = await cors.client.options(
        CHAT,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert "access-control-allow-credentials" not in response.headers


async def test_cors_preflight_for_unlisted_origin_is_refused(cors: Any) -> None:
    response = await cors.client.options(
        CHAT, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_error_responses_are_readable_by_the_listed_origin(cors: Any) -> None:
    """A browser app must be able to read the 401 envelope to tell its user what is wrong."""
    response = await cors.client.get("/v1/models", headers={"Origin": ORIGIN})
    assert_error(response, 401, code="invalid_api_key")
    assert response.headers["access-control-allow-origin"] == ORIGIN


async def test_cors_simple_post_still_needs_the_key(cors: Any) -> None:
    response = await cors.client.post(CHAT, json=chat_body(), headers={"Origin": ORIGIN})
    assert_error(response, 401, code="invalid_api_key")
    assert cors.factory.calls == 0
