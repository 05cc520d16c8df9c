#!/usr/bin/env bash
# Install mlx-router as a macOS user LaunchAgent (no sudo).
#   INSTALL_DIR (default ~/mlx_router_app) gets its own .venv and a copy of config.json (kept on
#   reinstall). --dry-run prints every action and writes the plist to a temporary folder.
set -euo pipefail

LABEL="com.mlx-router.server"
INSTALL_DIR="${INSTALL_DIR:-$HOME/mlx_router_app}"
PLIST="$HOME/Library/LaunchAgents/$LABEL.plist"
SRC_DIR="$(cd "$(dirname "$0")" && pwd)"
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1

run() { echo "+ $*"; [ "$DRY_RUN" = 1 ] || "$@"; }

if [ "$DRY_RUN" = 1 ]; then
    PLIST="$(mktemp -d)/$LABEL.plist"
elif [ "$(uname -s)" != "Darwin" ]; then
    echo "install-launchd.sh is for macOS; on Linux run the server with 'make run'." >&2
    exit 1
fi

run mkdir -p "$INSTALL_DIR/logs"
run rsync -a --exclude .git --exclude .venv --exclude models --exclude logs "$SRC_DIR/" "$INSTALL_DIR/app/"
if [ ! -f "$INSTALL_DIR/config.json" ]; then
    run cp "$SRC_DIR/config.json" "$INSTALL_DIR/config.json"
fi
run make -C "$INSTALL_DIR/app" install VENV="$INSTALL_DIR/.venv"

mkdir -p "$(dirname "$PLIST")"
cat > "$PLIST" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>Label</key><string>$LABEL</string>
    <key>ProgramArguments</key>
    <array>
        <string>$INSTALL_DIR/.venv/bin/mlx-router</string>
        <string>--config</string><string>$INSTALL_DIR/config.json</string>
    </array>
    <key>WorkingDirectory</key><string>$INSTALL_DIR</string>
    <key>RunAtLoad</key><true/>
    <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
    <key>ThrottleInterval</key><integer>10</integer>
    <key>ExitTimeOut</key><integer>60</integer>
    <key>StandardOutPath</key><string>$INSTALL_DIR/logs/launchd.out.log</string>
    <key>StandardErrorPath</key><string>$INSTALL_DIR/logs/launchd.err.log</string>
</dict>
</plist>
PLIST
echo "wrote $PLIST"
[ "$DRY_RUN" = 1 ] && exit 0

launchctl bootout "gui/$(id -u)/$LABEL" 2>/dev/null || true
run launchctl bootstrap "gui/$(id -u)" "$PLIST"
for _ in $(seq 1 60); do
    if curl -fs http://127.0.0.1:8800/health >/dev/null 2>&1; then
        echo "mlx-router is running: http://127.0.0.1:8800"
        exit 0
    fi
    sleep 2
done
echo "the service did not answer /health; see $INSTALL_DIR/logs" >&2
exit 1
