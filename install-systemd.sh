#!/usr/bin/env bash
# Install mlx-router as a systemd user service on Linux (no sudo).
#
# Usage: ./install-systemd.sh [--dry-run]
#
#   INSTALL_DIR     where the install lives (default ~/mlx_router_app): its own .venv, config.json
#                   (copied on the first install, never overwritten), logs/
#   CONFIG          the config copied on the first install (default: config.json of this checkout)
#   PYTHON          the Python (>= 3.11) that creates the virtualenv (default python3)
#   MLX_BACKEND     cpu (default: mlx[cpu]) or cuda13 (mlx[cuda13], NVIDIA GPUs)
#   HEALTH_TIMEOUT  seconds to wait for /health after the start (default 300)
#
# Writes ~/.config/systemd/user/mlx-router.service, enables and (re)starts it, and waits for
# /health. Running it again updates the virtualenv and the unit and keeps the config.
# --dry-run prints every action and writes the unit to a temporary folder instead.
# Remove with ./uninstall-systemd.sh.
set -euo pipefail
# shellcheck source=scripts/service-common.sh
. "$(cd "$(dirname "$0")" && pwd)/scripts/service-common.sh"

UNIT_FILE="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/$SERVICE_UNIT"

svc_parse_args "" ${1+"$@"}  # ${1+...}: no arguments stay safe under set -u in old bash
svc_require_python

if [ "$DRY_RUN" = 0 ]; then
    [ "$(uname -s)" = Linux ] || die "this installer is for Linux; on macOS run ./install-launchd.sh"
    systemctl --user show-environment >/dev/null 2>&1 \
        || die "no systemd user session here (systemctl --user does not answer). Log in through a normal login session (ssh or console, not su or a container shell), or run the server in the foreground with 'make run'"
fi

MLX_BACKEND="${MLX_BACKEND:-cpu}"
case "$MLX_BACKEND" in
    cpu | cuda13) EXTRAS="[$MLX_BACKEND]" ;;
    *) die "MLX_BACKEND=$MLX_BACKEND is not a Linux backend; use MLX_BACKEND=cpu (default) or MLX_BACKEND=cuda13" ;;
esac
say "MLX backend: mlx$EXTRAS"

service_alive() { systemctl --user is-active --quiet "$SERVICE_UNIT" 2>/dev/null; }
# systemctl reports "activating" while a start or an automatic restart is pending.
service_wanted() { ! systemctl --user is-failed --quiet "$SERVICE_UNIT" 2>/dev/null; }

svc_read_settings
RUNNING=0
if service_alive; then RUNNING=1; fi
svc_check_port "$RUNNING"

svc_install_config
svc_install_venv "$EXTRAS"
svc_check_config
svc_make_log_dir

# systemd unquotes ExecStart words and expands % specifiers and $ variables: escape them.
sd_word() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/%/%%/g' -e 's/\$/$$/g')"; }
sd_path() { printf '%s' "$1" | sed -e 's/%/%%/g'; }

svc_write_file "$UNIT_FILE" <<UNIT
# mlx-router as a systemd user service, written by install-systemd.sh: rerun it to update this
# file (the config is kept), remove with uninstall-systemd.sh. Local changes belong in a drop-in
# (systemctl --user edit mlx-router), which survives a reinstall.
[Unit]
Description=mlx-router: OpenAI-compatible server for local MLX models
# A crash loop stops after StartLimitBurst starts within StartLimitIntervalSec.
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=exec
WorkingDirectory=$(sd_path "$INSTALL_DIR")
ExecStart=$(sd_word "$SERVER_BIN") --config $(sd_word "$CONFIG_FILE") --log-file $(sd_word "$LOG_FILE")
Environment=PYTHONUNBUFFERED=1
# systemctl --user reload mlx-router: re-read config.json without dropping running requests.
ExecReload=/bin/kill -HUP \$MAINPID
# Console output goes to the journal (journalctl --user -u mlx-router); --log-file keeps a
# rotating copy in $(sd_path "$LOG_DIR").
StandardOutput=journal
StandardError=journal
SyslogIdentifier=mlx-router
# Restart after a crash or kill -9, not after a clean stop; exit status 2 is a configuration
# error, which a restart cannot fix.
Restart=on-failure
RestartSec=5
RestartPreventExitStatus=2
# A stop sends SIGTERM to the main process only: it refuses new requests, lets running ones
# finish for up to server.drain_timeout (${DRAIN_TIMEOUT}s), then stops its worker processes.
# Whatever is still running after TimeoutStopSec gets SIGKILL.
KillMode=mixed
TimeoutStopSec=$STOP_TIMEOUT

[Install]
WantedBy=default.target
UNIT

svc_run systemctl --user daemon-reload
svc_run systemctl --user reset-failed "$SERVICE_UNIT" || true
svc_run systemctl --user enable "$SERVICE_UNIT"
svc_run systemctl --user restart "$SERVICE_UNIT"
if ! svc_wait_healthy service_wanted; then
    warn "see: systemctl --user status mlx-router; journalctl --user -u mlx-router -n 50; $LOG_FILE"
    exit 1
fi

svc_print_install_files ./uninstall-systemd.sh "$UNIT_FILE"
say "Status: systemctl --user status mlx-router    Logs: journalctl --user -u mlx-router -f"
say "To keep it running after you log out and start it at boot, enable lingering once (not done here):"
say "    loginctl enable-linger $(id -un)"
