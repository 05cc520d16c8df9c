#!/usr/bin/env bash
# Remove the LaunchAgent installed by install-launchd.sh. Config and logs are kept unless you
# answer yes. --dry-run prints the actions only.
set -euo pipefail

LABEL="com.mlx-router.server"
INSTALL_DIR="${INSTALL_DIR:-$HOME/mlx_router_app}"
PLIST="$HOME/Library/LaunchAgents/$LABEL.plist"
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
run() { echo "+ $*"; [ "$DRY_RUN" = 1 ] || "$@"; }

run launchctl bootout "gui/$(id -u)/$LABEL" || true
run rm -f "$PLIST"
run rm -rf "$INSTALL_DIR/app" "$INSTALL_DIR/.venv"
if [ "$DRY_RUN" = 0 ]; then
    read -r -p "Also delete $INSTALL_DIR/config.json and logs? [y/N] " answer
    if [ "${answer:-n}" = "y" ]; then
        rm -rf "$INSTALL_DIR"
    fi
fi
