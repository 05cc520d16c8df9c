"""``load_settings``: the shipped config, operator-friendly errors, environment overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlx_router.config.settings import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config.json"


def write_config(tmp_path: Path, data: Any, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def config_error(path: Path | None = None, environ: dict[str, str] | None = None, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=environ or {}, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- the shipped file


def test_shipped_config_loads() -> None:
    settings = load_settings(SHIPPED, environ={})
    raw = json.loads(SHIPPED.read_text(encoding="utf-8"))
    assert settings.defaults.model == raw["defaults"]["model"]
    assert settings.defaults.max_tokens == raw["defaults"]["max_tokens"]
    assert settings.defaults.cache_size == raw["defaults"]["cache_size"]
    assert settings.server.ip == "127.0.0.1"
    assert settings.server.port == raw["server"]["port"]
    assert settings.server.cors_origins == []
    assert set(settings.models) == set(raw["models"])
    for model_id, model in raw["models"].items():
        for key, value in model.items():
            assert getattr(settings.models[model_id], key) == value, (model_id, key)


def test_built_in_defaults_are_safe() -> None:
    settings = load_settings(None, environ={})
    assert settings.server.ip == "127.0.0.1"
    assert settings.server.port == 8800
    assert settings.server.api_key is None
    assert settings.server.allow_unauthenticated is False
    assert settings.server.cors_origins == []
    assert settings.defaults.stream is False
    assert settings.defaults.streaming_format == "sse"


def test_old_project_shape_loads(tmp_path: Path) -> None:
    """The old project's keys keep working, including the obsolete stream_chunk_size."""
    path = write_config(
        tmp_path,
        {
            "defaults": {"max_tokens": 4096, "timeout": 120, "cache_size": 2, "stream_chunk_size": 8},
            "server": {"ip": "127.0.0.1", "port": 8800, "debug": False},
            "models": {
                "mlx-community/Llama-3.2-3B-Instruct-4bit": {
                    "max_tokens": 8192,
                    "temp": 0.7,
                    "top_p": 0.9,
                    "chat_template": "llama3",
                    "required_memory_gb": 4,
                    "memory_pressure_max_tokens": {"normal": 8192, "moderate": 4096, "high": 2048, "critical": 1024},
                }
            },
        },
    )
    settings = load_settings(path, environ={})
    assert settings.models["mlx-community/Llama-3.2-3B-Instruct-4bit"].chat_template == "llama3"
    assert settings.defaults.stream_chunk_size == 8


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({"defualts": {}}, "defualts", "'defaults'"),
        ({"severs": {}}, "severs", "'server'"),
        ({"defaults": {"max_token": 10}}, "defaults.max_token", "'max_tokens'"),
        ({"defaults": {"stremaing_format": "sse"}}, "defaults.stremaing_format", "'streaming_format'"),
        ({"server": {"prot": 9000}}, "server.prot", "'port'"),
        ({"server": {"cors_origin": []}}, "server.cors_origin", "'cors_origins'"),
        ({"models": {"m": {"chat_templat": "auto"}}}, "models.m.chat_templat", "'chat_template'"),
        ({"models": {"m": {"max_token": 5}}}, "models.m.max_token", "'max_tokens'"),
    ],
)
def test_unknown_key_suggests(tmp_path: Path, data: dict[str, Any], key: str, suggestion: str) -> None:
    message = config_error(write_config(tmp_path, data))
    assert f"{key}: unknown key" in message, message
    assert f"Did you mean {suggestion}?" in message, message
    assert "Traceback" not in message


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, {"server": {"zzzzzz": 1}}))
    assert "server.zzzzzz: unknown key" in message
    assert "Known keys:" in message and "port" in message and "api_key" in message


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    data = {"defaults": {"max_token": 1, "timeout": "soon"}, "server": {"prot": 1}}
    message = config_error(write_config(tmp_path, data))
    assert "defaults.max_token" in message
    assert "defaults.timeout" in message
    assert "server.prot" in message


# --------------------------------------------------------------------------- wrong values


@pytest.mark.parametrize(
    ("data", "key", "shown"),
    [
        ({"defaults": {"max_tokens": "lots"}}, "defaults.max_tokens", "'lots'"),
        ({"defaults": {"max_tokens": 0}}, "defaults.max_tokens", "0"),
        ({"defaults": {"stream": "maybe"}}, "defaults.stream", "'maybe'"),
        ({"defaults": {"streaming_format": "xml"}}, "defaults.streaming_format", "'xml'"),
        ({"server": {"port": 70000}}, "server.port", "70000"),
        ({"server": {"port": "http"}}, "server.port", "'http'"),
        ({"models": {"m": {"temp": 5}}}, "models.m.temp", "5"),
        ({"models": {"m": {"chat_template": "vicuna"}}}, "models.m.chat_template", "'vicuna'"),
    ],
)
def test_wrong_value_names_key_and_value(tmp_path: Path, data: dict[str, Any], key: str, shown: str) -> None:
    path = write_config(tmp_path, data)
    message = config_error(path)
    assert f"  - {key}: " in message, message
    assert f"(got {shown})" in message, message
    assert str(path) in message


def test_unknown_chat_template_lists_the_names(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, {"models": {"m": {"chat_template": "vicuna"}}}))
    for name in ("llama3", "deepseek", "qwen", "phi4", "chatml", "gpt-oss", "generic"):
        assert name in message


def test_unknown_pressure_level(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, {"models": {"m": {"memory_pressure_max_tokens": {"severe": 10}}}}))
    assert "models.m.memory_pressure_max_tokens" in message and "'severe'" in message


def test_section_of_wrong_type(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, {"server": [1, 2]}))
    assert "server" in message


# --------------------------------------------------------------------------- unreadable files


def test_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = write_config(tmp_path, '{\n  "defaults": {\n    "max_tokens": 10,\n  }\n}\n')
    message = config_error(path)
    assert "not valid JSON" in message
    assert "line 4, column 3" in message, message
    assert str(path) in message


def test_json_not_an_object(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, "[1, 2, 3]"))
    assert "JSON object" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    message = config_error(path)
    assert str(path) in message and "does not exist" in message


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    message = config_error(tmp_path)
    assert "Cannot read config file" in message


# --------------------------------------------------------------------------- environment


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, {"defaults": {"max_tokens": 100, "model_directory": "/from/file"}, "server": {"port": 8800}}
    )
    settings = load_settings(
        path,
        environ={
            "MLX_ROUTER_SERVER_PORT": "9100",
            "MLX_ROUTER_DEFAULTS_MAX_TOKENS": "77",
            "MLX_ROUTER_API_KEY": "sk-env",
            "MLX_MODEL_DIR": "/from/env",
            "UNRELATED": "x",
        },
    )
    assert settings.server.port == 9100
    assert settings.defaults.max_tokens == 77
    assert settings.server.api_key == "sk-env"
    assert settings.resolve_api_key() == "sk-env"
    assert settings.defaults.model_directory == "/from/env"
    assert settings.model_dir == Path("/from/env")


def test_env_parses_booleans_lists_and_keeps_strings() -> None:
    settings = load_settings(
        None,
        environ={
            "MLX_ROUTER_DEFAULTS_STREAM": "true",
            "MLX_ROUTER_SERVER_CORS_ORIGINS": '["http://a.example"]',
            "MLX_ROUTER_SERVER_IP": "0.0.0.0",
            "MLX_ROUTER_DEFAULTS_TIMEOUT": "2.5",
            "MLX_ROUTER_API_KEY": "123456",
        },
    )
    assert settings.defaults.stream is True
    assert settings.server.cors_origins == ["http://a.example"]
    assert settings.server.ip == "0.0.0.0"
    assert settings.defaults.timeout == 2.5
    assert settings.server.api_key == "123456"


def test_env_api_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n", encoding="utf-8")
    settings = load_settings(None, environ={"MLX_ROUTER_API_KEY_FILE": str(key_file)})
    assert settings.resolve_api_key() == "sk-from-file"


@pytest.mark.parametrize("value", ["", "   \n"])
def test_empty_api_key_file_is_an_error(tmp_path: Path, value: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(value, encoding="utf-8")
    settings = load_settings(None, environ={"MLX_ROUTER_API_KEY_FILE": str(key_file)})
    with pytest.raises(ConfigError) as info:
        settings.resolve_api_key()
    assert "api_key_file" in str(info.value)


def test_missing_api_key_file_is_an_error(tmp_path: Path) -> None:
    settings = load_settings(None, environ={"MLX_ROUTER_API_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError) as info:
        settings.resolve_api_key()
    assert "server.api_key_file" in str(info.value)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("MLX_ROUTER_SERVER_PROT", "MLX_ROUTER_SERVER_PORT"),
        ("MLX_ROUTER_PORT", "MLX_ROUTER_SERVER_PORT"),
        ("MLX_ROUTER_DEFAULTS_MAX_TOKEN", "MLX_ROUTER_DEFAULTS_MAX_TOKENS"),
        ("MLX_ROUTER_APIKEY", "MLX_ROUTER_API_KEY"),
    ],
)
def test_unknown_env_var_suggests(name: str, suggestion: str) -> None:
    message = config_error(None, environ={name: "1"})
    assert f"Unknown environment variable {name}." in message
    assert f"Did you mean {suggestion}?" in message


def test_bad_env_value_names_the_key() -> None:
    message = config_error(None, environ={"MLX_ROUTER_SERVER_PORT": "abc"})
    assert "server.port" in message and "'abc'" in message
    assert "environment" in message


def test_env_errors_do_not_blame_a_valid_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"server": {"port": 8800}})
    message = config_error(path, environ={"MLX_ROUTER_SERVER_PORT": "0"})
    assert "server.port" in message and "environment or command line" in message


def test_file_errors_are_reported_before_env_is_applied(tmp_path: Path) -> None:
    """A bad file is reported as the file's problem even when the environment would fix it."""
    path = write_config(tmp_path, {"server": {"port": "x"}})
    message = config_error(path, environ={"MLX_ROUTER_SERVER_PORT": "9000"})
    assert str(path) in message and "server.port" in message


def test_numeric_api_key_from_env() -> None:
    """Optional string keys keep the raw env value: digits, 'true' and 'null' stay strings."""
    settings = load_settings(
        None,
        environ={
            "MLX_ROUTER_SERVER_API_KEY": "123456",
            "MLX_ROUTER_DEFAULTS_MODEL": "true",
            "MLX_ROUTER_SERVER_LOG_FILE": "42",
        },
    )
    assert settings.server.api_key == "123456"
    assert settings.defaults.model == "true"
    assert settings.server.log_file == "42"


def test_config_errors_do_not_echo_the_api_key(tmp_path: Path) -> None:
    """A mistyped key must not end up on the terminal or in the log."""
    message = config_error(write_config(tmp_path, {"server": {"api_key": 987654321}}))
    assert "server.api_key" in message
    assert "987654321" not in message, message


# --------------------------------------------------------------------------- overrides and model


def test_overrides_win_over_env_and_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"server": {"port": 8801}})
    settings = load_settings(path, environ={"MLX_ROUTER_SERVER_PORT": "8802"}, overrides={"server": {"port": 8803}})
    assert settings.server.port == 8803


def test_settings_validate_on_assignment() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.server.port = 0  # validate_assignment: bounds hold after load too
