#!/usr/bin/env bash
# Remove the systemd user service installed by install-systemd.sh.
#
# Usage: ./uninstall-systemd.sh [--dry-run] [--yes]
#
#   INSTALL_DIR  the install to remove (default ~/mlx_router_app)
#
# Stops and disables mlx-router.service, deletes the unit and the install's virtualenv, and asks
# before deleting config.json and the logs (--yes deletes them without asking). Models under
# INSTALL_DIR/models are kept. --dry-run prints every action and changes nothing.
set -euo pipefail
# shellcheck source=scripts/service-common.sh
. "$(cd "$(dirname "$0")" && pwd)/scripts/service-common.sh"

UNIT_FILE="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/$SERVICE_UNIT"

svc_parse_args "--yes" ${1+"$@"}  # ${1+...}: no arguments stay safe under set -u in old bash
if [ "$DRY_RUN" = 0 ] && [ "$(uname -s)" != Linux ]; then
    die "this uninstaller is for Linux; on macOS run ./uninstall-launchd.sh"
fi

# systemctl stop waits for the drain (up to the unit's TimeoutStopSec).
if [ "$DRY_RUN" = 1 ] || systemctl --user cat "$SERVICE_UNIT" >/dev/null 2>&1; then
    svc_run systemctl --user disable --now "$SERVICE_UNIT" || warn "could not stop $SERVICE_UNIT; removing the files anyway"
fi
svc_uninstall_files "$UNIT_FILE"
svc_run systemctl --user daemon-reload || warn "systemctl --user daemon-reload failed (no systemd user session?)"
svc_run systemctl --user reset-failed "$SERVICE_UNIT" 2>/dev/null || true
say "mlx-router service removed"
