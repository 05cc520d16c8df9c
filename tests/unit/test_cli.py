"""The command line: flags over environment over file, refusals with one clear message.

No test here starts the server: every ``main`` call either fails validation or uses
``--check-config``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlx_router import __version__
from mlx_router.cli import build_parser, main, settings_from_args
from mlx_router.config.settings import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config.json"
SECRET = "sk-cli-test-secret-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own MLX_ROUTER_* settings must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("MLX_ROUTER_") or name == "MLX_MODEL_DIR":
            monkeypatch.delenv(name)


def settings_for(*argv: str) -> Any:
    return settings_from_args(build_parser().parse_args(list(argv)))


def write_config(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def clean_subprocess_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not (k.startswith("MLX_ROUTER_") or k == "MLX_MODEL_DIR")}


# --------------------------------------------------------------------------- precedence


def test_flags_override_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, {"defaults": {"max_tokens": 100, "timeout": 10}, "server": {"port": 8801}})
    monkeypatch.setenv("MLX_ROUTER_SERVER_PORT", "8802")
    monkeypatch.setenv("MLX_ROUTER_DEFAULTS_MAX_TOKENS", "200")
    monkeypatch.setenv("MLX_ROUTER_DEFAULTS_TIMEOUT", "20")
    monkeypatch.setenv("MLX_MODEL_DIR", str(tmp_path / "env-models"))

    from_env = settings_for("--config", str(path))
    assert from_env.server.port == 8802
    assert from_env.defaults.max_tokens == 200
    assert from_env.defaults.timeout == 20
    assert from_env.model_dir == tmp_path / "env-models"

    flags = settings_for(
        "--config", str(path), "--port", "8803", "--max-tokens", "300", "--timeout", "30",
        "--model-dir", str(tmp_path / "flag-models"), "--debug", "--log-file", str(tmp_path / "x.log"),
    )
    assert flags.server.port == 8803
    assert flags.defaults.max_tokens == 300
    assert flags.defaults.timeout == 30
    assert flags.model_dir == tmp_path / "flag-models"
    assert flags.server.debug is True
    assert flags.server.log_file == str(tmp_path / "x.log")


def test_absent_flags_do_not_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag not given leaves the env/file value (store_true flags default to None, not False)."""
    path = write_config(tmp_path, {"server": {"debug": True, "port": 8801}})
    settings = settings_for("--config", str(path))
    assert settings.server.debug is True
    assert settings.server.port == 8801
    assert settings.server.allow_unauthenticated is False


def test_invalid_flag_value_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings_for("--port", "70000")
    assert "server.port" in str(info.value)


def test_unparsable_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--port", "eighty"])
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_unknown_default_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(ConfigError) as info:
        settings_for("--model-dir", str(tmp_path / "models"), "--model", "no-such-model")
    assert "defaults.model" in str(info.value) and "no-such-model" in str(info.value)


def test_default_model_found_in_model_dir(tiny_models_root: Path) -> None:
    settings = settings_for("--model-dir", str(tiny_models_root), "--model", "tiny-llama")
    assert settings.defaults.model == "tiny-llama"


# --------------------------------------------------------------------------- main()


@pytest.mark.parametrize(
    "content",
    [
        '{"defaults": {"max_tokens": 10,}}',
        '{"defaults": {"max_token": 10}}',
        '{"server": {"port": "http"}}',
    ],
)
def test_bad_config_returns_2_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = write_config(tmp_path, content)
    assert main(["--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mlx-router: ")
    assert captured.err.count("mlx-router: ") == 1
    assert "Traceback" not in captured.err
    assert str(path) in captured.err


def test_missing_config_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_unknown_env_var_returns_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLX_ROUTER_SERVER_PROT", "9000")
    assert main(["--check-config"]) == 2
    err = capsys.readouterr().err
    assert "MLX_ROUTER_SERVER_PORT" in err and "Traceback" not in err


def test_public_bind_without_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ip", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlx-router: ")
    assert "API key" in err
    assert "--allow-unauthenticated" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("ip", ["0.0.0.0", "192.168.1.20", "::"])
def test_public_bind_refused_even_with_check_config(capsys: pytest.CaptureFixture[str], ip: str) -> None:
    assert main(["--ip", ip, "--check-config"]) == 2
    assert "--allow-unauthenticated" in capsys.readouterr().err


def test_public_bind_with_allow_unauthenticated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ip", "0.0.0.0", "--allow-unauthenticated", "--check-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["server"]["ip"] == "0.0.0.0"
    assert printed["server"]["allow_unauthenticated"] is True


def test_public_bind_with_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLX_ROUTER_API_KEY", SECRET)
    assert main(["--ip", "0.0.0.0", "--check-config"]) == 0
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n", encoding="utf-8")
    monkeypatch.delenv("MLX_ROUTER_API_KEY")
    assert main(["--ip", "0.0.0.0", "--api-key-file", str(key_file), "--check-config"]) == 0
    assert SECRET not in capsys.readouterr().out


@pytest.mark.parametrize("ip", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_bind_needs_no_key(ip: str) -> None:
    assert main(["--ip", ip, "--check-config"]) == 0


def test_check_config_prints_settings_without_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLX_ROUTER_API_KEY", SECRET)
    assert main(["--check-config"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    printed = json.loads(out)
    assert printed["server"]["port"] == 8800
    assert "api_key" not in printed["server"]

    monkeypatch.delenv("MLX_ROUTER_API_KEY")
    path = write_config(tmp_path, {"server": {"api_key": SECRET}})
    assert main(["--config", str(path), "--check-config"]) == 0
    assert SECRET not in capsys.readouterr().out


def test_check_config_with_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(SHIPPED), "--check-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["defaults"]["model"] == json.loads(SHIPPED.read_text())["defaults"]["model"]


def test_check_config_rejects_missing_api_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Also on a loopback bind, where no key is required: a named key file must be readable."""
    assert main(["--api-key-file", str(tmp_path / "missing"), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "api_key_file" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    assert main(["--api-key-file", str(empty), "--check-config"]) == 2


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("-v", "--version"):
        with pytest.raises(SystemExit) as info:
            main([flag])
        assert info.value.code == 0
        assert capsys.readouterr().out.strip() == f"mlx-router {__version__}"


# --------------------------------------------------------------------------- as processes


def test_main_py_help_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "main.py", "-h"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_subprocess_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--config", "--ip", "--port", "--max-tokens", "--timeout", "--debug", "-v"):
        assert flag in result.stdout


def test_module_version_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlx_router", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_subprocess_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mlx-router {__version__}"


def test_bad_config_subprocess_has_no_traceback(tmp_path: Path) -> None:
    path = write_config(tmp_path, '{"server": {"prot": 1}}')
    result = subprocess.run(
        [sys.executable, "main.py", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_subprocess_env(),
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Did you mean 'port'?" in result.stderr


def test_a_busy_port_is_reported_before_anything_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"defaults": {"model_directory": str(tmp_path), "embedded_model": False}, "server": {"log_file": None}}))
    try:
        assert main(["--config", str(config), "--port", str(port)]) == 1
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "server.port" in err
