"""The service installers: what they generate, what they refuse, what they leave alone.

The four scripts run for real, with ``--dry-run`` (which must work on any system) and with HOME,
INSTALL_DIR, TMPDIR and the systemd runtime directory pointed into a temporary folder, so no
service manager of the machine is ever reached. The generated plist is parsed with ``plistlib``;
the generated unit is checked by ``systemd-analyze verify``.
"""

from __future__ import annotations

import configparser
import json
import os
import plistlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlx_router.config.settings import ServerSettings
from scripts import service_helper as helper

REPO = Path(__file__).resolve().parents[2]
LAUNCHD = ("install-launchd.sh", "uninstall-launchd.sh")
SYSTEMD = ("install-systemd.sh", "uninstall-systemd.sh")
DRAIN = 45.0
WRITE_LINE = re.compile(r"^\+ write (?P<tmp>.+) \(a real install writes (?P<dest>.+)\):$", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sandbox:
    """A temporary HOME / INSTALL_DIR / TMPDIR and the config an install would copy."""

    root: Path
    home: Path
    install_dir: Path
    tmp: Path
    config: Path
    env: dict[str, str]

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / script), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def dry_run(self, script: str, *args: str, **env: str) -> str:
        result = self.run(script, "--dry-run", *args, **env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def files(self) -> set[Path]:
        return {path for path in self.root.rglob("*") if path != self.config}


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    home, tmp, run_dir = tmp_path / "home", tmp_path / "tmp", tmp_path / "run"
    for folder in (home, tmp, run_dir):
        folder.mkdir(mode=0o700)
    config = tmp_path / "source-config.json"
    data = json.loads((REPO / "config.json").read_text(encoding="utf-8"))
    data["server"].update(port=_free_port(), drain_timeout=DRAIN)
    config.write_text(json.dumps(data), encoding="utf-8")
    # A space and an ampersand: the plist must escape XML, the unit must quote its words.
    install_dir = tmp_path / "mlx router & co"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TMPDIR": str(tmp),
        # No systemctl --user call may reach a real user manager (a developer's own service).
        "XDG_RUNTIME_DIR": str(run_dir),
        "INSTALL_DIR": str(install_dir),
        "CONFIG": str(config),
        "PYTHON": sys.executable,
    }
    return Sandbox(tmp_path, home, install_dir, tmp, config, env)


def _written(output: str) -> tuple[Path, Path]:
    """(the file a dry run wrote, where a real install would write it)."""
    match = WRITE_LINE.search(output)
    assert match, output
    return Path(match["tmp"]), Path(match["dest"])


def _listed(output: str, heading: str) -> list[str]:
    """The indented lines right under ``heading``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return [line.strip() for line in lines[start:end]]


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(path, encoding="utf-8")
    return parser


# --------------------------------------------------------------------------------------------
# What the installers generate


def test_launchd_plist(sandbox: Sandbox) -> None:
    out = sandbox.dry_run("install-launchd.sh")
    written, dest = _written(out)
    assert dest == sandbox.home / "Library/LaunchAgents/com.mlx-router.server.plist"
    assert written.parent.parent == sandbox.tmp
    plist = plistlib.loads(written.read_bytes())
    install = sandbox.install_dir
    assert plist["Label"] == "com.mlx-router.server"
    assert plist["ProgramArguments"] == [
        f"{install}/.venv/bin/mlx-router", "--config", f"{install}/config.json",
        "--log-file", f"{install}/logs/mlx_router.log",
    ]
    assert plist["WorkingDirectory"] == str(install)
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["RunAtLoad"] is True
    assert 5 <= plist["ThrottleInterval"] <= 60
    assert plist["ExitTimeOut"] > DRAIN
    assert plist["ExitTimeOut"] == helper.ServiceSettings(8800, "127.0.0.1", DRAIN).stop_timeout
    assert plist["StandardOutPath"] == f"{install}/logs/launchd.out.log"
    assert plist["StandardErrorPath"] == f"{install}/logs/launchd.err.log"
    env = plist["EnvironmentVariables"]
    assert env["PATH"].split(":")[0] == f"{install}/.venv/bin" and "/usr/sbin" in env["PATH"].split(":")
    assert env["PYTHONUNBUFFERED"] == "1"


def test_systemd_unit(sandbox: Sandbox) -> None:
    out = sandbox.dry_run("install-systemd.sh")
    written, dest = _written(out)
    assert dest == sandbox.home / ".config/systemd/user/mlx-router.service"
    assert written.parent.parent == sandbox.tmp
    unit = _unit(written)
    install = sandbox.install_dir
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > DRAIN
    assert 1 <= int(service["RestartSec"]) <= 60
    assert int(unit["Unit"]["StartLimitBurst"]) >= 3 and int(unit["Unit"]["StartLimitIntervalSec"]) >= 60
    assert service["RestartPreventExitStatus"] == "2"  # a configuration error does not loop
    assert service["WorkingDirectory"] == str(install)
    assert shlex.split(service["ExecStart"]) == [
        f"{install}/.venv/bin/mlx-router", "--config", f"{install}/config.json",
        "--log-file", f"{install}/logs/mlx_router.log",
    ]
    assert service["StandardError"] == "journal"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the server re-reads its config on SIGHUP
    assert unit["Install"]["WantedBy"] == "default.target"


def _verify(unit: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is installed by make system-deps")
def test_systemd_unit_passes_systemd_analyze(sandbox: Sandbox) -> None:
    written, _ = _written(sandbox.dry_run("install-systemd.sh"))
    # verify also checks that ExecStart is executable: stand in for the virtualenv's entry point.
    server = sandbox.install_dir / ".venv/bin/mlx-router"
    server.parent.mkdir(parents=True)
    server.write_text("#!/bin/sh\n", encoding="utf-8")
    server.chmod(0o755)
    result = _verify(written, sandbox.env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # The check has teeth: a misspelt value is reported (systemd itself only ignores it).
    broken = written.with_name("broken.service")
    broken.write_text(written.read_text(encoding="utf-8").replace("KillMode=mixed", "KillMode=mixd"), encoding="utf-8")
    assert "ignoring: mixd" in _verify(broken, sandbox.env).stderr


@pytest.mark.parametrize(
    ("backend", "extras"), [(None, "[cpu]"), ("cpu", "[cpu]"), ("cuda13", "[cuda13]")]
)
def test_systemd_backend_extras(sandbox: Sandbox, backend: str | None, extras: str) -> None:
    out = sandbox.dry_run("install-systemd.sh", **({"MLX_BACKEND": backend} if backend else {}))
    pip = [line for line in out.splitlines() if " pip install " in line and "requirements-model" not in line]
    targets = [shlex.split(line[2:])[-1] for line in pip]
    assert targets[-1] == f"{sandbox.install_dir}/.build{extras}"


def test_systemd_refuses_unknown_backend(sandbox: Sandbox) -> None:
    result = sandbox.run("install-systemd.sh", "--dry-run", MLX_BACKEND="metal")
    assert result.returncode != 0 and "MLX_BACKEND=cuda13" in result.stderr


def test_launchd_installs_plain_mlx_from_a_copy_of_the_checkout(sandbox: Sandbox) -> None:
    out = sandbox.dry_run("install-launchd.sh")
    build = f"{sandbox.install_dir}/.build"
    steps = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]
    copy = next(i for i, step in enumerate(steps) if step[0] == "tar")
    install = next(i for i, step in enumerate(steps) if "pip" in step and step[-1] == build)  # no [extras]
    pack, unpack = " ".join(steps[copy]).split(" | ")
    assert pack.startswith(f"tar -C {REPO} ") and " mlx_router" in pack and unpack == f"tar -C {build} -xf -"
    assert steps[install][:6] == [f"{sandbox.install_dir}/.venv/bin/python", "-m", "pip", "install", "--quiet", "--upgrade"]
    assert copy < install and steps[install + 1] == ["rm", "-rf", build]


# --------------------------------------------------------------------------------------------
# Faults


@pytest.mark.parametrize("script", [LAUNCHD[0], SYSTEMD[0]])
def test_old_python_is_refused(sandbox: Sandbox, script: str) -> None:
    fake = sandbox.root / "python3.9"
    fake.write_text("#!/bin/sh\necho 'Python 3.9.6'\n", encoding="utf-8")
    fake.chmod(0o755)
    result = sandbox.run(script, "--dry-run", PYTHON=str(fake))
    assert result.returncode == 1
    assert f"{fake} is Python 3.9.6" in result.stderr and ">= 3.11" in result.stderr and "PYTHON=" in result.stderr
    assert "+ " not in result.stdout  # refused before any action
    assert sandbox.files() <= {sandbox.home, sandbox.tmp, sandbox.root / "run", fake}


@pytest.mark.parametrize("script", [LAUNCHD[0], SYSTEMD[0]])
def test_missing_python_is_refused(sandbox: Sandbox, script: str) -> None:
    result = sandbox.run(script, "--dry-run", PYTHON=str(sandbox.root / "no-such-python"))
    assert result.returncode == 1 and "no Python found" in result.stderr and ">= 3.11" in result.stderr


@pytest.mark.parametrize("script", [LAUNCHD[0], SYSTEMD[0]])
def test_port_in_use_is_refused(sandbox: Sandbox, script: str) -> None:
    port = json.loads(sandbox.config.read_text(encoding="utf-8"))["server"]["port"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = sandbox.run(script, "--dry-run")
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is not available" in result.stderr
    assert f"set server.port in {sandbox.config}" in result.stderr
    assert "+ " not in result.stdout


@pytest.mark.parametrize("script", [LAUNCHD[0], SYSTEMD[0]])
def test_invalid_config_is_refused_with_the_servers_message(sandbox: Sandbox, script: str) -> None:
    data = json.loads(sandbox.config.read_text(encoding="utf-8"))
    data["server"]["prot"] = 9000
    sandbox.config.write_text(json.dumps(data), encoding="utf-8")
    result = sandbox.run(script, "--dry-run")
    assert result.returncode == 1
    assert "server.prot: unknown key. Did you mean 'port'?" in result.stderr
    assert f"cannot use {sandbox.config}" in result.stderr


@pytest.mark.parametrize("script", [LAUNCHD[0], SYSTEMD[0]])
def test_dry_run_twice_is_identical_and_changes_nothing(sandbox: Sandbox, script: str) -> None:
    first, second = sandbox.dry_run(script), sandbox.dry_run(script)
    (tmp1, _), (tmp2, _) = _written(first), _written(second)
    assert first.replace(str(tmp1.parent), "<tmp>") == second.replace(str(tmp2.parent), "<tmp>")
    assert tmp1.read_bytes() == tmp2.read_bytes()
    # Only the two dry-run folders were written; HOME and INSTALL_DIR are untouched.
    assert sandbox.files() == {sandbox.home, sandbox.tmp, sandbox.root / "run", tmp1.parent, tmp1, tmp2.parent, tmp2}


@pytest.mark.parametrize("scripts", [LAUNCHD, SYSTEMD])
def test_uninstall_removes_exactly_what_install_creates(sandbox: Sandbox, scripts: tuple[str, str]) -> None:
    install_out = sandbox.dry_run(scripts[0])
    uninstall_out = sandbox.dry_run(scripts[1])
    created = _listed(install_out, "Files of this install")
    removed = _listed(uninstall_out, "Files this uninstall removes")
    _, dest = _written(install_out)
    install = sandbox.install_dir
    assert created == removed == [str(dest), f"{install}/.venv", f"{install}/config.json", f"{install}/logs"]
    rm_targets = [shlex.split(line[2:])[-1] for line in uninstall_out.splitlines() if line.startswith("+ rm ")]
    assert rm_targets == created
    assert "would ask" in uninstall_out  # config and logs are asked about


@pytest.mark.parametrize("script", [LAUNCHD[0], SYSTEMD[0]])
def test_reinstall_keeps_config_and_updates_venv(sandbox: Sandbox, script: str) -> None:
    install = sandbox.install_dir
    (install / ".venv/bin").mkdir(parents=True)
    (install / ".venv/bin/python").symlink_to(sys.executable)
    kept = json.loads(sandbox.config.read_text(encoding="utf-8"))
    kept["server"].update(port=_free_port(), drain_timeout=100)
    (install / "config.json").write_text(json.dumps(kept), encoding="utf-8")
    before = (install / "config.json").read_bytes()
    out = sandbox.dry_run(script)
    assert f"Kept {install}/config.json (an installed config is never overwritten)" in out
    assert f"Kept the virtualenv {install}/.venv: updating it" in out
    assert not [line for line in out.splitlines() if line.startswith("+ cp ")]
    assert " -m venv " not in out and "pip install --quiet --upgrade" in out
    assert f"port {kept['server']['port']} on 127.0.0.1, drain deadline 100s, stop timeout 130s" in out
    assert (install / "config.json").read_bytes() == before
    written, _ = _written(out)
    if written.suffix == ".plist":
        assert plistlib.loads(written.read_bytes())["ExitTimeOut"] == 130
    else:
        assert _unit(written)["Service"]["TimeoutStopSec"] == "130"


@pytest.mark.skipif(sys.platform != "linux", reason="a real run on macOS would install the LaunchAgent")
def test_real_launchd_install_on_linux_points_to_systemd(sandbox: Sandbox) -> None:
    result = sandbox.run(LAUNCHD[0])
    assert result.returncode == 1 and "./install-systemd.sh" in result.stderr
    assert not sandbox.install_dir.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_real_systemd_install_without_user_session_is_refused(sandbox: Sandbox) -> None:
    result = sandbox.run(SYSTEMD[0])
    assert result.returncode == 1 and "no systemd user session" in result.stderr
    assert not sandbox.install_dir.exists()


def _fake_install(sandbox: Sandbox) -> Path:
    install = sandbox.install_dir
    unit = sandbox.home / ".config/systemd/user/mlx-router.service"
    for folder in (unit.parent, install / ".venv/bin", install / "logs", install / "models/m"):
        folder.mkdir(parents=True)
    unit.write_text("[Service]\n", encoding="utf-8")
    (install / "config.json").write_text("{}", encoding="utf-8")
    (install / "logs/mlx_router.log").write_text("log\n", encoding="utf-8")
    (install / "models/m/weights.safetensors").write_bytes(b"w")
    return unit


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_uninstall_asks_before_config_and_logs(sandbox: Sandbox) -> None:
    """Without a terminal and without --yes the config and logs stay; models always stay."""
    unit = _fake_install(sandbox)
    install = sandbox.install_dir
    result = sandbox.run(SYSTEMD[1])
    assert result.returncode == 0, result.stderr
    assert not unit.exists() and not (install / ".venv").exists()
    assert (install / "config.json").exists() and (install / "logs/mlx_router.log").exists()
    assert "pass --yes to delete" in result.stdout

    result = sandbox.run(SYSTEMD[1], "--yes")
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(install).as_posix() for p in install.rglob("*")) == [
        "models", "models/m", "models/m/weights.safetensors"
    ]
    assert f"Kept {install}/models" in result.stdout

    (install / "models").rename(sandbox.root / "moved-models")
    result = sandbox.run(SYSTEMD[1], "--yes")  # a second uninstall is harmless
    assert result.returncode == 0, result.stderr
    assert not install.exists()


@pytest.mark.parametrize("script", [*LAUNCHD, *SYSTEMD])
def test_help_and_unknown_options(sandbox: Sandbox, script: str) -> None:
    help_out = sandbox.run(script, "--help")
    assert help_out.returncode == 0 and "--dry-run" in help_out.stdout and "INSTALL_DIR" in help_out.stdout
    bad = sandbox.run(script, "--dry-rn")
    assert bad.returncode == 1 and "unknown option: --dry-rn" in bad.stderr


# --------------------------------------------------------------------------------------------
# The Python side


def test_fallback_defaults_are_the_servers() -> None:
    """A bare python3 (no pydantic) reads the config with defaults equal to ServerSettings'."""
    for key, value in helper.FALLBACK_DEFAULTS.items():
        assert ServerSettings.model_fields[key].default == value, key


def test_fallback_reader_agrees_with_the_server_loader(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    for server in ({}, {"port": 9123, "ip": "0.0.0.0", "drain_timeout": 2.5}):
        config.write_text(json.dumps({"server": server}), encoding="utf-8")
        assert helper._read_json_settings(config) == helper.read_settings(config)
    for bad in ({"port": "80"}, {"port": 70000}, {"drain_timeout": -1}, {"ip": ""}):
        config.write_text(json.dumps({"server": bad}), encoding="utf-8")
        with pytest.raises(helper.SettingsError, match=f"server.{next(iter(bad))}"):
            helper._read_json_settings(config)
    config.write_text("{", encoding="utf-8")
    with pytest.raises(helper.SettingsError, match="not valid JSON"):
        helper._read_json_settings(config)


def test_service_environment_is_not_the_installers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLX_ROUTER_* in the installing shell does not reach the service, so it must not count."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"server": {"port": 9124}}), encoding="utf-8")
    monkeypatch.setenv("MLX_ROUTER_SERVER_PORT", "9999")
    assert helper.read_settings(config).port == 9124


def test_port_problem() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert helper.port_problem("127.0.0.1", port)
    assert helper.port_problem("127.0.0.1", port) is None


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[int]]]:
    status = [503]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok" if status[0] == 200 else "loading", "reason": "default model loading"})
            self.send_response(status[0] if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], status
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_health_probe(health_server: tuple[int, list[int]]) -> None:
    port, status = health_server
    assert helper.health("127.0.0.1", port) == (False, "503 default model loading")
    status[0] = 200
    assert helper.health("127.0.0.1", port) == (True, "200 ok")
    ok, answer = helper.health("127.0.0.1", _free_port())
    assert not ok and answer.startswith("no answer")


def test_wildcard_binds_are_probed_on_loopback() -> None:
    assert helper.health_host("0.0.0.0") == "127.0.0.1"
    assert helper.health_host("::") == "::1"
    assert helper.health_host("192.168.1.5") == "192.168.1.5"
