#!/usr/bin/env bash
# Remove the LaunchAgent installed by install-launchd.sh.
#
# Usage: ./uninstall-launchd.sh [--dry-run] [--yes]
#
#   INSTALL_DIR  the install to remove (default ~/mlx_router_app)
#
# Unloads com.mlx-router.server, deletes its plist and the install's virtualenv, and asks before
# deleting config.json and the logs (--yes deletes them without asking). Models under
# INSTALL_DIR/models are kept. --dry-run prints every action and changes nothing (it runs on
# any system).
set -euo pipefail
# shellcheck source=scripts/service-common.sh
. "$(cd "$(dirname "$0")" && pwd)/scripts/service-common.sh"

PLIST_FILE="$HOME/Library/LaunchAgents/$SERVICE_LABEL.plist"
DOMAIN="gui/$(id -u)"

svc_parse_args "--yes" ${1+"$@"}  # ${1+...}: no arguments stay safe under set -u in old bash
if [ "$DRY_RUN" = 0 ] && [ "$(uname -s)" != Darwin ]; then
    die "this uninstaller is for macOS; on Linux run ./uninstall-systemd.sh"
fi

service_loaded() { command -v launchctl >/dev/null 2>&1 && launchctl print "$DOMAIN/$SERVICE_LABEL" >/dev/null 2>&1; }

if [ "$DRY_RUN" = 1 ] || service_loaded; then
    svc_run launchctl bootout "$DOMAIN/$SERVICE_LABEL" || warn "launchctl bootout failed; removing the files anyway"
    # Let the server drain and exit before its virtualenv goes (at most the plist's ExitTimeOut).
    limit="$( (/usr/libexec/PlistBuddy -c 'Print :ExitTimeOut' "$PLIST_FILE" 2>/dev/null) || echo 60)"
    waited=0
    while [ "$DRY_RUN" = 0 ] && service_loaded && [ "$waited" -lt "$limit" ]; do
        sleep 1
        waited=$((waited + 1))
    done
fi
svc_uninstall_files "$PLIST_FILE"
say "mlx-router LaunchAgent removed"
