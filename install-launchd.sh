#!/usr/bin/env bash
# Install mlx-router as a macOS user LaunchAgent (no sudo).
#
# Usage: ./install-launchd.sh [--dry-run]
#
#   INSTALL_DIR     where the install lives (default ~/mlx_router_app): its own .venv, config.json
#                   (copied on the first install, never overwritten), logs/
#   CONFIG          the config copied on the first install (default: config.json of this checkout)
#   PYTHON          the Python (>= 3.11) that creates the virtualenv (default python3)
#   HEALTH_TIMEOUT  seconds to wait for /health after the start (default 300)
#
# Writes ~/Library/LaunchAgents/com.mlx-router.server.plist, (re)loads it and waits for /health.
# Running it again updates the virtualenv and the plist and keeps the config.
# --dry-run prints every action and writes the plist to a temporary folder instead (it runs on
# any system). Remove with ./uninstall-launchd.sh.
set -euo pipefail
# shellcheck source=scripts/service-common.sh
. "$(cd "$(dirname "$0")" && pwd)/scripts/service-common.sh"

PLIST_FILE="$HOME/Library/LaunchAgents/$SERVICE_LABEL.plist"
DOMAIN="gui/$(id -u)"

svc_parse_args "" ${1+"$@"}  # ${1+...}: no arguments stay safe under set -u in old bash
svc_require_python

if [ "$DRY_RUN" = 0 ] && [ "$(uname -s)" != Darwin ]; then
    die "this installer is for macOS; on Linux run ./install-systemd.sh (or try this one with --dry-run)"
fi
say "MLX backend: mlx (Metal)"

service_loaded() { command -v launchctl >/dev/null 2>&1 && launchctl print "$DOMAIN/$SERVICE_LABEL" >/dev/null 2>&1; }

svc_read_settings
LOADED=0
if service_loaded; then LOADED=1; fi
svc_check_port "$LOADED"

svc_install_config
svc_install_venv ""
svc_check_config
svc_make_log_dir

xml() { printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'; }

svc_write_file "$PLIST_FILE" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- mlx-router as a user LaunchAgent, written by install-launchd.sh: rerun it to update this file
     (the config is kept), remove with uninstall-launchd.sh. -->
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>$SERVICE_LABEL</string>
    <key>ProgramArguments</key>
    <array>
        <string>$(xml "$SERVER_BIN")</string>
        <string>--config</string>
        <string>$(xml "$CONFIG_FILE")</string>
        <string>--log-file</string>
        <string>$(xml "$LOG_FILE")</string>
    </array>
    <key>WorkingDirectory</key>
    <string>$(xml "$INSTALL_DIR")</string>
    <!-- launchd starts jobs with a bare PATH: add Homebrew's (poppler renders PDFs). -->
    <key>EnvironmentVariables</key>
    <dict>
        <key>PATH</key>
        <string>$(xml "$VENV_DIR/bin"):/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin</string>
        <key>PYTHONUNBUFFERED</key>
        <string>1</string>
    </dict>
    <!-- Start at login; restart after a crash or kill -9, not after a clean exit. -->
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <!-- At most one start per this many seconds. -->
    <key>ThrottleInterval</key>
    <integer>10</integer>
    <!-- A stop sends SIGTERM: the server refuses new requests and lets running ones finish for up
         to server.drain_timeout (${DRAIN_TIMEOUT}s). SIGKILL only after ExitTimeOut seconds. -->
    <key>ExitTimeOut</key>
    <integer>$STOP_TIMEOUT</integer>
    <!-- Console output; the rotating log named in ProgramArguments sits beside it. -->
    <key>StandardOutPath</key>
    <string>$(xml "$LOG_DIR/launchd.out.log")</string>
    <key>StandardErrorPath</key>
    <string>$(xml "$LOG_DIR/launchd.err.log")</string>
</dict>
</plist>
PLIST

if [ "$DRY_RUN" = 0 ]; then plutil -lint "$PLIST_FILE" >/dev/null || die "the generated $PLIST_FILE is not a valid plist"; fi
if [ "$LOADED" = 1 ]; then
    svc_run launchctl bootout "$DOMAIN/$SERVICE_LABEL"
    # bootout returns before the old server has drained; bootstrap fails while it still runs.
    waited=0
    while [ "$DRY_RUN" = 0 ] && service_loaded && [ "$waited" -lt "$STOP_TIMEOUT" ]; do
        sleep 1
        waited=$((waited + 1))
    done
fi
svc_run launchctl enable "$DOMAIN/$SERVICE_LABEL"
svc_run launchctl bootstrap "$DOMAIN" "$PLIST_FILE"
if ! svc_wait_healthy service_loaded; then
    warn "see: launchctl print $DOMAIN/$SERVICE_LABEL; $LOG_DIR/launchd.err.log; $LOG_FILE"
    exit 1
fi

svc_print_install_files ./uninstall-launchd.sh "$PLIST_FILE"
say "Status: launchctl print $DOMAIN/$SERVICE_LABEL    Logs: tail -f $LOG_FILE"
