#!/usr/bin/env bash
# fieldmon agent: install, upgrade or remove it from this offline bundle. Needs no network.
#
# Usage, as root, from the unpacked bundle:
#   ./install.sh --handover DIR           install the agent with a site's handover folder:
#                                         DIR/site.yaml, DIR/secrets/ (files the site file names),
#                                         optional DIR/credentials/ (systemd credentials), DIR/hooks/
#   ./install.sh --site FILE [--secrets DIR]   the same from a site file (secrets: FILE's secrets/)
#   ./install.sh                          re-apply to what is installed (same result when run twice)
#   ./install.sh --upgrade [--handover DIR]    a new venv beside the old, checked, then swapped in;
#                                         the outbox (/var/lib/fieldmon) and config stay
#   ./install.sh --uninstall [--purge]    remove the venv, the unit and the user; keep /etc/fieldmon
#                                         and /var/lib/fieldmon unless --purge
# Options:
#   --root DIR      install into the root file system at DIR (an image or chroot that has
#                   python3.11) with useradd --root and systemctl --root, instead of /
#   --force         start the agent even when `fieldmon-agent check` reports a FAIL (say, the
#                   uplink is not up yet: the agent keeps its samples in the outbox meanwhile)
#   --no-check      do not run `check` at all (an image prepared away from the site)
#   --python PATH   the Python 3.11 that runs the agent (default /usr/bin/python3)
# Exit status: 0 done; 1 check failed, agent not (re)started; 2 bad arguments or invalid site
# file; 3 this bundle cannot install here (damaged, another platform or Python).
#
# What it sets up: the system user `fieldmon` (no login; in group `video` when it exists, for
# vcgencmd), /etc/fieldmon (root:fieldmon 0750; site.yaml root:fieldmon 0640; secrets/ files
# fieldmon 0600; credentials/ files root 0600, handed to the unit with LoadCredential=),
# /var/lib/fieldmon (fieldmon 0750: the outbox), a venv from the bundle's wheels (pip from the
# bundle, --no-index, hash-checked) under /opt/fieldmon/agent/releases/ with `current` pointing at
# the one in use, the unit from the bundle plus a drop-in with this install's user, and
# /usr/local/bin/fieldmon-agent. The agent is enabled and started only when `fieldmon-agent
# validate` and `check` pass, both run as the service user with the unit's capabilities.
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=$(date +%s%N)
SERVICE_USER=fieldmon
INSTALL_DIR=/opt/fieldmon/agent
RELEASES=$INSTALL_DIR/releases
CURRENT=$INSTALL_DIR/current
UNIT_DIR=/etc/systemd/system
CLI_LINK=/usr/local/bin/fieldmon-agent
MARKER=.fieldmon-bundle
PATH_CLEAN=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf 'install.sh: %s\n' "$*"; }
die() {
  local status=${2:-1}
  printf 'install.sh: error: %s\n' "$1" >&2
  exit "$status"
}
loud() {
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  printf '!!! %s\n' "$@" >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}
elapsed() {
  local tenths=$((($(date +%s%N) - T0) / 100000000))
  printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}
step() { printf '[%6ss] %s\n' "$(elapsed)" "$*"; }
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}

# -- arguments -----------------------------------------------------------------------------------
MODE=install
ROOT=/
SITE_SRC=
SECRETS_SRC=
CRED_SRC=
HOOKS_SRC=
CHECK=1
FORCE=0
PURGE=0
PYTHON=/usr/bin/python3
while [ $# -gt 0 ]; do
  case $1 in
    --handover)
      [ $# -ge 2 ] || die "--handover needs a folder" 2
      [ -f "$2/site.yaml" ] || die "$2/site.yaml does not exist: a handover folder holds site.yaml" 2
      SITE_SRC=$2/site.yaml
      [ -d "$2/secrets" ] && SECRETS_SRC=$2/secrets
      [ -d "$2/credentials" ] && CRED_SRC=$2/credentials
      [ -d "$2/hooks" ] && HOOKS_SRC=$2/hooks
      shift 2 ;;
    --site)
      [ $# -ge 2 ] && [ -f "$2" ] || die "--site needs an existing site file" 2
      SITE_SRC=$2
      [ -z "$SECRETS_SRC" ] && [ -d "$(dirname "$2")/secrets" ] && SECRETS_SRC=$(dirname "$2")/secrets
      shift 2 ;;
    --secrets)
      [ $# -ge 2 ] && [ -d "$2" ] || die "--secrets needs an existing folder" 2
      SECRETS_SRC=$2
      shift 2 ;;
    --root)
      [ $# -ge 2 ] && [ -d "$2" ] || die "--root needs an existing folder" 2
      ROOT=$(cd "$2" && pwd)
      shift 2 ;;
    --python)
      [ $# -ge 2 ] || die "--python needs a path" 2
      PYTHON=$2
      shift 2 ;;
    --upgrade) MODE=upgrade; shift ;;
    --uninstall) MODE=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    --force) FORCE=1; shift ;;
    --no-check) CHECK=0; shift ;;
    -h | --help) usage 0 ;;
    *) printf 'install.sh: unknown argument %s\n\n' "$1" >&2; usage 2 ;;
  esac
done
if [ "$PURGE" = 1 ] && [ "$MODE" != uninstall ]; then die "--purge goes with --uninstall" 2; fi
if [ "$MODE" = uninstall ] && [ -n "$SITE_SRC$SECRETS_SRC" ]; then
  die "--uninstall takes no site file" 2
fi
[ "$(id -u)" = 0 ] || die "run as root (sudo ./install.sh ...)" 2

# Paths inside the target root: R /etc/fieldmon is /etc/fieldmon, or DIR/etc/fieldmon with --root.
ROOT_PREFIX=${ROOT%/}
R() { printf '%s%s' "$ROOT_PREFIX" "$1"; }
in_root() {
  if [ -z "$ROOT_PREFIX" ]; then "$@"; else chroot "$ROOT" "$@"; fi
}
USER_OPTS=()
[ -n "$ROOT_PREFIX" ] && USER_OPTS=(--root "$ROOT")
systemd_live() { [ -z "$ROOT_PREFIX" ] && [ -d /run/systemd/system ]; }

# -- the bundle ----------------------------------------------------------------------------------
[ -f "$HERE/bundle.env" ] && [ -f "$HERE/SHA256SUMS" ] || die "no bundle.env beside install.sh: run it from the unpacked bundle" 3
if ! (cd "$HERE" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1); then
  die "the bundle is damaged (a file does not match SHA256SUMS): copy the .tar again and unpack it afresh" 3
fi
# shellcheck source=/dev/null
. "$HERE/bundle.env"
BUNDLE_ID=$(sha256sum "$HERE/SHA256SUMS" | cut -c1-12)
CONFIG=$UNIT_CONFIG
CONFIG_DIR=$(dirname "$CONFIG")
STATE_DIR=$UNIT_STATE_DIR
VENV_LINK=$(dirname "$(dirname "$UNIT_AGENT")")
DROPIN_DIR=$UNIT_DIR/$UNIT_NAME.d
DROPIN=$DROPIN_DIR/50-fieldmon-bundle.conf

# One install.sh at a time on a root.
mkdir -p "$(R /run)"
exec 9>"$(R /run)/fieldmon-install.lock"
flock -n 9 || die "another install.sh is running on this system" 3

STAGE=
CRED_RUN=
cleanup() {
  [ -n "$STAGE" ] && rm -rf -- "$STAGE"
  [ -n "$CRED_RUN" ] && rm -rf -- "$CRED_RUN"
  return 0
}
trap cleanup EXIT

# -- helpers -------------------------------------------------------------------------------------
passwd_field() { awk -F: -v u="$1" -v f="$2" '$1 == u { print $f }' "$(R /etc/passwd)" 2>/dev/null; }
has_group() { grep -q "^$1:" "$(R /etc/group)" 2>/dev/null; }
in_group() {
  awk -F: -v g="$1" -v u="$2" '
    $1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) found = 1 }
    END { exit !found }' "$(R /etc/group)"
}
# Copy SRC to DST (a path in the root) with owner, group and mode; CHANGED=1 when content moved.
CHANGED=0
place() {
  local src=$1 dst=$2 owner=$3 group=$4 mode=$5
  if ! cmp -s "$src" "$(R "$dst")"; then
    install -o "$owner" -g "$group" -m "$mode" "$src" "$(R "$dst")"
    CHANGED=1
  else
    chown "$owner:$group" "$(R "$dst")"
    chmod "$mode" "$(R "$dst")"
  fi
}
# Point LINK at TARGET (relative) in one rename, so nothing ever sees it missing.
relink() {
  local target=$1 link=$2
  ln -s "$target" "$(R "$link").new.$$"
  mv -T "$(R "$link").new.$$" "$(R "$link")"
}
relative() { realpath -m -s --relative-to="$(dirname "$2")" "$1"; }
remove_tree() {
  case $1 in /|/opt|/etc|/var|/var/lib|/usr|"") die "refusing to remove $1" 3 ;; esac
  rm -rf -- "$(R "$1")"
}
marker_value() { sed -n "s/^$2=//p" "$(R "$INSTALL_DIR/$1/$MARKER")" 2>/dev/null; }
current_release() {
  if [ -L "$(R "$CURRENT")" ]; then readlink "$(R "$CURRENT")"; fi
}
plus_caps() { printf '%s' "$1" | sed 's/\([^,][^,]*\)/+\1/g'; }
# Run a command as the unit runs the agent: its user and groups, capabilities, a clean environment.
as_service() {
  local opts=(--reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups)
  if [ -n "$UNIT_CAPS" ]; then
    opts+=(--inh-caps="-all,$(plus_caps "$UNIT_CAPS")" --ambient-caps="-all,$(plus_caps "$UNIT_CAPS")")
  fi
  [ -n "$UNIT_BOUNDING_CAPS" ] && opts+=(--bounding-set="-all,$(plus_caps "$UNIT_BOUNDING_CAPS")")
  [ "$UNIT_NO_NEW_PRIVILEGES" = yes ] && opts+=(--no-new-privs)
  local env=(env)
  [ -n "$CRED_RUN" ] && env+=(CREDENTIALS_DIRECTORY="${CRED_RUN#"$ROOT_PREFIX"}")
  in_root setpriv "${opts[@]}" --reset-env "${env[@]}" "$@"
}

# -- steps ---------------------------------------------------------------------------------------
check_machine() {
  local probe
  [ -x "$(R "$PYTHON")" ] || die "no $PYTHON on this system: the agent needs Debian's python3 (3.$(printf '%s' "$BUNDLE_PYTHON" | cut -d. -f2))" 3
  probe=$(in_root env -i PATH="$PATH_CLEAN" "$PYTHON" -c '
import os, platform, struct, sys
machine = os.uname().machine
if struct.calcsize("P") == 4 and machine in ("aarch64", "armv8l", "armv7l"):
    machine = "armv7l"  # 32-bit Raspberry Pi OS, also on a 64-bit kernel
print("%d.%d" % sys.version_info[:2], machine, platform.libc_ver()[1] or "0")
') || die "$PYTHON does not run" 3
  read -r PY_VERSION PLATFORM GLIBC <<<"$probe"
  [ "$PY_VERSION" = "$BUNDLE_PYTHON" ] || die "this bundle is for Python $BUNDLE_PYTHON (Debian 12 / Raspberry Pi OS bookworm); $PYTHON is $PY_VERSION" 3
  case " $BUNDLE_PLATFORMS " in
    *" $PLATFORM "*) ;;
    *)
      local why_var=BUNDLE_NOT_SHIPPED_$PLATFORM
      die "this bundle has no wheels for $PLATFORM (it holds: $BUNDLE_PLATFORMS)${!why_var:+. Not shipped because: ${!why_var}}" 3 ;;
  esac
  local need_var=BUNDLE_GLIBC_$PLATFORM
  if [ "$(printf '%s\n%s\n' "${!need_var}" "$GLIBC" | sort -V | head -n1)" != "${!need_var}" ]; then
    die "the wheels for $PLATFORM need glibc ${!need_var}; this system has $GLIBC" 3
  fi
}

ensure_user() {
  if [ -z "$(passwd_field "$SERVICE_USER" 1)" ]; then
    local groups=()
    has_group video && groups=(--groups video)
    useradd "${USER_OPTS[@]}" --system --user-group --no-create-home --home-dir "$STATE_DIR" \
      --shell /usr/sbin/nologin --comment "fieldmon agent" "${groups[@]}" "$SERVICE_USER"
    step "created the system user $SERVICE_USER${groups:+ (in group video, for vcgencmd)}"
  fi
  if has_group video && ! in_group video "$SERVICE_USER"; then
    usermod "${USER_OPTS[@]}" --append --groups video "$SERVICE_USER"
  fi
  SVC_UID=$(passwd_field "$SERVICE_USER" 3)
  SVC_GID=$(passwd_field "$SERVICE_USER" 4)
}

ensure_dirs() {
  install -d -m 0755 "$(R /opt/fieldmon)" "$(R "$INSTALL_DIR")" "$(R "$RELEASES")" \
    "$(R "$(dirname "$VENV_LINK")")"
  install -d -o 0 -g "$SVC_GID" -m 0750 "$(R "$CONFIG_DIR")"
  install -d -o "$SVC_UID" -g "$SVC_GID" -m 0750 "$(R "$STATE_DIR")"
  # What an earlier install left (the user may have been made again, with another uid).
  chown -R "$SVC_UID:$SVC_GID" "$(R "$STATE_DIR")"
}

# A new venv under releases/, built with the Pi's python3 and the bundle's pip, offline.
build_release() {
  local name=$BUNDLE_VERSION-$BUNDLE_ID-$(date -u +%Y%m%dT%H%M%SZ) dir stage_in
  dir=$RELEASES/$name
  while [ -e "$(R "$dir")" ]; do dir=$dir.1; done
  # A release without its marker is what an interrupted run left.
  for old in "$(R "$RELEASES")"/*; do
    [ -d "$old" ] && [ ! -f "$old/$MARKER" ] && rm -rf -- "$old"
  done
  if [ -n "$ROOT_PREFIX" ]; then
    mkdir -p "$(R /var/tmp)"
    STAGE=$(mktemp -d "$(R /var/tmp)/fieldmon-bundle.XXXXXX")
    cp -r "$HERE/wheels" "$HERE/requirements" "$STAGE/"
    stage_in=${STAGE#"$ROOT_PREFIX"}
  else
    stage_in=$HERE
  fi
  step "creating the venv $dir ($PYTHON -m venv --without-pip)"
  in_root env -i PATH="$PATH_CLEAN" "$PYTHON" -m venv --without-pip "$dir"
  step "installing $(grep -c -- '--hash=' "$HERE/requirements/$PLATFORM.txt") wheels for $PLATFORM with the bundled pip (--no-index, --require-hashes)"
  # PIP_CONFIG_FILE=/dev/null and --isolated: no pip.conf (Raspberry Pi OS points one at
  # piwheels) and no PIP_* variable can add an index or another wheel.
  if ! in_root env -i PATH="$PATH_CLEAN" PIP_CONFIG_FILE=/dev/null "$dir/bin/python" \
    "$stage_in/$BUNDLE_PIP/pip" install --isolated --no-index --find-links "$stage_in/wheels" \
    --require-hashes --only-binary :all: --no-cache-dir --disable-pip-version-check \
    --no-input --quiet --requirement "$stage_in/requirements/$PLATFORM.txt"; then
    rm -rf -- "$(R "$dir")"
    die "pip could not install the bundle's wheels (above)" 3
  fi
  cp "$HERE/bundle.json" "$(R "$dir/bundle.json")"
  printf 'BUNDLE_ID=%s\nBUNDLE_VERSION=%s\nPLATFORM=%s\nINSTALLED_AT=%s\n' \
    "$BUNDLE_ID" "$BUNDLE_VERSION" "$PLATFORM" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    >"$(R "$dir/$MARKER")"
  [ -n "$STAGE" ] && rm -rf -- "$STAGE" && STAGE=
  NEW=releases/${dir##*/}
}

place_config() {
  if [ -n "$SITE_SRC" ]; then place "$SITE_SRC" "$CONFIG" 0 "$SVC_GID" 0640; fi
  [ -f "$(R "$CONFIG")" ] || die "no site file at $CONFIG yet: give --handover DIR or --site FILE" 2
  chown "0:$SVC_GID" "$(R "$CONFIG")" && chmod 0640 "$(R "$CONFIG")"
  local file
  # Secret files the site file names (relative paths: secrets/...), readable by the service
  # user alone: the secret checks accept a file only its owner can read.
  if [ -n "$SECRETS_SRC" ] || [ -d "$(R "$CONFIG_DIR/secrets")" ]; then
    install -d -o 0 -g "$SVC_GID" -m 0750 "$(R "$CONFIG_DIR/secrets")"
    if [ -n "$SECRETS_SRC" ]; then
      for file in "$SECRETS_SRC"/*; do
        [ -f "$file" ] && place "$file" "$CONFIG_DIR/secrets/${file##*/}" "$SVC_UID" "$SVC_GID" 0600
      done
    fi
    find "$(R "$CONFIG_DIR/secrets")" -maxdepth 1 -type f \
      -exec chown "$SVC_UID:$SVC_GID" {} + -exec chmod 0600 {} +
  fi
  # systemd credentials: root's alone; the unit hands each to the agent (LoadCredential=), and
  # the site file names it `credential:NAME`.
  if [ -n "$CRED_SRC" ]; then
    install -d -o 0 -g 0 -m 0700 "$(R "$CONFIG_DIR/credentials")"
    for file in "$CRED_SRC"/*; do
      [ -f "$file" ] && place "$file" "$CONFIG_DIR/credentials/${file##*/}" 0 0 0600
    done
  fi
  if [ -n "$HOOKS_SRC" ]; then
    install -d -o 0 -g 0 -m 0755 "$(R "$CONFIG_DIR/hooks")"
    for file in "$HOOKS_SRC"/*; do
      if [ -f "$file" ] && [ -x "$file" ]; then
        place "$file" "$CONFIG_DIR/hooks/${file##*/}" 0 0 0755
      elif [ -f "$file" ]; then
        place "$file" "$CONFIG_DIR/hooks/${file##*/}" 0 0 0644
      fi
    done
  fi
  return 0
}

credential_names() {
  local file
  for file in "$(R "$CONFIG_DIR/credentials")"/*; do
    [ -f "$file" ] && printf '%s\n' "${file##*/}"
  done
  return 0
}

dropin_text() {
  cat <<EOF
# Written by install.sh of the fieldmon agent bundle $BUNDLE_VERSION ($BUNDLE_ID); rewritten at
# every install. The unit beside it is the bundle's deploy/systemd/$UNIT_NAME, unchanged.
[Service]
# The system user install.sh made: in group video (vcgencmd), owner of $STATE_DIR (the
# outbox), reader of $CONFIG_DIR through its group.
DynamicUser=no
User=$SERVICE_USER
Group=$SERVICE_USER
StateDirectoryMode=0750
EOF
  if [ "${UNIT_DYNAMIC_USER:-no}" = yes ]; then
    cat <<EOF
# The sandbox DynamicUser=yes gave the unit, kept with the static user.
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
RemoveIPC=yes
RestrictSUIDSGID=yes
EOF
  fi
  local name
  while read -r name; do
    [ -n "$name" ] && printf 'LoadCredential=%s:%s/credentials/%s\n' "$name" "$CONFIG_DIR" "$name"
  done < <(credential_names)
  return 0
}

place_unit() {
  install -d -m 0755 "$(R "$UNIT_DIR")" "$(R "$DROPIN_DIR")"
  place "$HERE/systemd/$UNIT_NAME" "$UNIT_DIR/$UNIT_NAME" 0 0 0644
  local text
  text=$(mktemp)
  dropin_text >"$text"
  place "$text" "$DROPIN" 0 0 0644
  rm -f -- "$text"
}

place_links() {
  if [ "$VENV_LINK" != "$CURRENT" ]; then
    if [ -e "$(R "$VENV_LINK")" ] && [ ! -L "$(R "$VENV_LINK")" ]; then
      die "$VENV_LINK exists and is not install.sh's link (a venv made by hand?): move it away first" 3
    fi
    relink "$(relative "$CURRENT" "$VENV_LINK")" "$VENV_LINK"
  fi
  local cli
  cli=$(R "$CLI_LINK")
  if [ ! -e "$cli" ] || [ -L "$cli" ]; then
    install -d -m 0755 "$(dirname "$cli")"
    relink "$(relative "$CURRENT/bin/fieldmon-agent" "$CLI_LINK")" "$CLI_LINK"
  fi
}

# Credentials as the unit would get them: a private copy the service user alone can read.
stage_credentials() {
  [ -n "$(credential_names)" ] || return 0
  mkdir -p "$(R /run)"
  CRED_RUN=$(mktemp -d "$(R /run)/fieldmon-credentials.XXXXXX")
  cp "$(R "$CONFIG_DIR/credentials")"/* "$CRED_RUN/"
  chown -R "$SVC_UID:$SVC_GID" "$CRED_RUN"
  chmod 0500 "$CRED_RUN"
  chmod 0400 "$CRED_RUN"/*
}

# validate, then check, with AGENT (a release's bin/fieldmon-agent); returns check's status.
run_checks() {
  local agent=$1 status=0
  step "fieldmon-agent validate $CONFIG (as $SERVICE_USER)"
  if ! as_service "$agent" validate "$CONFIG"; then
    return 2
  fi
  if [ "$CHECK" = 0 ]; then
    loud "--no-check: fieldmon-agent check was NOT run. Nobody has seen this site's links," \
      "devices and broker answer. Run it before you leave the site:" \
      "  sudo fieldmon-agent check --config $CONFIG --report handover.md"
    return 0
  fi
  step "fieldmon-agent check --config $CONFIG (as $SERVICE_USER, with the unit's capabilities)"
  as_service "$agent" check --config "$CONFIG" || status=$?
  return "$status"
}

start_service() {
  local restart=$1
  if systemd_live; then
    systemctl daemon-reload
    systemctl enable --quiet "$UNIT_NAME"
    if [ "$restart" = 1 ]; then systemctl restart "$UNIT_NAME"; else systemctl start "$UNIT_NAME"; fi
    if ! systemctl is-active --quiet "$UNIT_NAME"; then
      systemctl --no-pager status "$UNIT_NAME" >&2 || true
      die "$UNIT_NAME did not start: journalctl -u $UNIT_NAME says why" 1
    fi
    SERVICE_STATE="enabled and running"
  else
    systemctl --root="$ROOT" enable --quiet "$UNIT_NAME"
    SERVICE_STATE="enabled (systemd is not running on this root: it starts at the next boot)"
  fi
  step "$UNIT_NAME: $SERVICE_STATE"
}

verify_unit() {
  [ -x "$(R /usr/bin/systemd-analyze)" ] || return 0
  local output
  if ! output=$(in_root systemd-analyze verify "$UNIT_DIR/$UNIT_NAME" 2>&1); then
    printf '%s\n' "$output" >&2
    return 1
  fi
  [ -n "$output" ] && printf '%s\n' "$output"
  return 0
}

prune_releases() {
  local keep_a=$1 keep_b=$2 old
  for old in "$(R "$RELEASES")"/*; do
    [ -d "$old" ] || continue
    case "releases/${old##*/}" in "$keep_a" | "$keep_b") ;; *) rm -rf -- "$old" ;; esac
  done
}

do_install() {
  check_machine
  step "fieldmon agent $BUNDLE_VERSION (bundle $BUNDLE_ID) for $PLATFORM, Python $PY_VERSION, into ${ROOT}"
  ensure_user
  ensure_dirs
  local cur cur_id previous="" agent
  cur=$(current_release)
  cur_id=
  [ -n "$cur" ] && cur_id=$(marker_value "$cur" BUNDLE_ID)
  NEW=
  if [ -n "$cur" ] && [ ! -x "$(R "$INSTALL_DIR/$cur/bin/fieldmon-agent")" ]; then
    say "the venv $INSTALL_DIR/$cur is incomplete; building it again"
    cur= cur_id=
  fi
  if [ "$MODE" = install ] && [ -n "$cur_id" ] && [ "$cur_id" != "$BUNDLE_ID" ]; then
    die "fieldmon agent $(marker_value "$cur" BUNDLE_VERSION) (bundle $cur_id) is installed and this bundle is $BUNDLE_VERSION ($BUNDLE_ID): run ./install.sh --upgrade" 2
  fi
  if [ -z "$cur" ] || [ "$MODE" = upgrade ]; then
    build_release
    if [ -z "$cur" ]; then
      relink "$NEW" "$CURRENT" # a first install: nothing runs the old one
      cur=$NEW NEW=
    fi
  else
    step "the venv of this bundle is in place: $INSTALL_DIR/$cur"
  fi
  place_config
  place_unit
  place_links
  stage_credentials
  agent=$INSTALL_DIR/${NEW:-$cur}/bin/fieldmon-agent
  local status=0
  run_checks "$agent" || status=$?
  if [ "$status" = 2 ]; then
    [ -n "$NEW" ] && rm -rf -- "$(R "$INSTALL_DIR/$NEW")"
    die "$CONFIG is not valid (above): fix the handover's site file and run install.sh again; the agent was not (re)started" 2
  fi
  if [ "$status" != 0 ]; then
    if [ "$FORCE" = 1 ]; then
      loud "fieldmon-agent check reported a FAIL (above), and --force starts the agent anyway." \
        "Until the FAIL rows are fixed, this site is NOT monitored as it should be." \
        "(An unreachable broker is fine for now: the outbox keeps the samples until it answers.)"
    else
      [ -n "$NEW" ] && rm -rf -- "$(R "$INSTALL_DIR/$NEW")"
      say "check reported a FAIL (above): the agent was NOT (re)started."
      say "Fix the FAIL rows and run install.sh again. When the only FAIL is the broker because the"
      say "uplink is not up yet, run install.sh --force: the agent keeps its samples until it is."
      exit 1
    fi
  fi
  local restart=$CHANGED
  if [ -n "$NEW" ]; then
    previous=$cur
    relink "$NEW" "$CURRENT"
    step "switched $CURRENT to $NEW (the outbox and $CONFIG_DIR are as they were)"
    cur=$NEW restart=1
  fi
  if ! verify_unit; then
    [ -n "$previous" ] && relink "$previous" "$CURRENT"
    die "systemd-analyze verify refused the unit (above)" 3
  fi
  prune_releases "$cur" "$previous"
  start_service "$restart"
  step "done: fieldmon agent $BUNDLE_VERSION in $(elapsed) s"
  cat <<EOF
  venv     $INSTALL_DIR/$cur ($VENV_LINK -> $CURRENT)
  config   $CONFIG (root:$SERVICE_USER 0640), secrets in $CONFIG_DIR/secrets ($SERVICE_USER 0600)
  outbox   $STATE_DIR ($SERVICE_USER 0750)
  service  $UNIT_NAME: $SERVICE_STATE
Next, the handover report:
  sudo fieldmon-agent check --config $CONFIG --report handover.md
EOF
}

do_uninstall() {
  if [ -f "$(R "$UNIT_DIR/$UNIT_NAME")" ]; then
    if systemd_live; then
      systemctl disable --now --quiet "$UNIT_NAME" || true
    else
      systemctl --root="$ROOT" disable --quiet "$UNIT_NAME" || true
    fi
  fi
  rm -f -- "$(R "$UNIT_DIR/$UNIT_NAME")"
  remove_tree "$DROPIN_DIR"
  if systemd_live; then systemctl daemon-reload; fi
  local cli
  cli=$(R "$CLI_LINK")
  if [ -L "$cli" ] && [[ "$(readlink "$cli")" == *"${INSTALL_DIR#/}"/* ]]; then
    rm -f -- "$cli"
  fi
  [ -L "$(R "$VENV_LINK")" ] && rm -f -- "$(R "$VENV_LINK")"
  remove_tree "$INSTALL_DIR"
  rmdir "$(R /opt/fieldmon)" 2>/dev/null || true
  if [ -n "$(passwd_field "$SERVICE_USER" 1)" ]; then
    userdel "${USER_OPTS[@]}" "$SERVICE_USER"
  fi
  if has_group "$SERVICE_USER"; then groupdel "${USER_OPTS[@]}" "$SERVICE_USER"; fi
  step "removed the venv, $UNIT_NAME and the user $SERVICE_USER"
  if [ "$PURGE" = 1 ]; then
    remove_tree "$CONFIG_DIR"
    remove_tree "$STATE_DIR"
    step "purged $CONFIG_DIR and $STATE_DIR (the outbox)"
  else
    say "kept $CONFIG_DIR (site file, secrets) and $STATE_DIR (the outbox); --uninstall --purge removes them"
  fi
}

case $MODE in
  install | upgrade) do_install ;;
  uninstall) do_uninstall ;;
esac
