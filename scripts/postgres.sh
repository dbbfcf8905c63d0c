#!/usr/bin/env bash
# A throwaway PostgreSQL server on localhost for tests and benchmarks (Optuna + MLflow stores).
#
#   scripts/postgres.sh install          # Debian's PostgreSQL, if its binaries are absent (root)
#   scripts/postgres.sh start [PORT]     # prints: DIR URL   (URL = postgresql+psycopg2://ferflow:PW@127.0.0.1:PORT)
#   scripts/postgres.sh stop DIR         # stops the server and removes DIR
#
# The URL names the psycopg2 driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3,
# while the project pins psycopg2-binary.
#
# `start` runs initdb into a fresh temporary DIR (as the `postgres` user when run as root:
# initdb refuses root), listens on 127.0.0.1 only, on PORT or a free port, with password
# (scram-sha-256) authentication for user `ferflow`, and creates the databases `optuna` and
# `mlflow`. Exit status 3 means "no PostgreSQL binaries and they cannot be installed".
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit "${2:-1}"; }

bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  d="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
  [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  return 1
}

install_pg() {
  bindir >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root (apt-get install -y postgresql)" 3
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and there is no apt-get" 3
  export DEBIAN_FRONTEND=noninteractive
  # the package's own cluster is not needed; keep its service from starting where we can
  apt-get install -y -q --no-install-recommends postgresql >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends postgresql >&2; } \
    || die "apt-get install postgresql failed" 3
  bindir >/dev/null || die "postgresql installed but initdb not found" 3
}

# run a command as the unprivileged server owner when we are root
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$OWNER" -- "$@"; else "$@"; fi
}

free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

start() {
  local bin port dir pw
  install_pg
  bin="$(bindir)"
  port="${1:-$(free_port)}"
  if [ "$(id -u)" = 0 ]; then
    OWNER=postgres
    id "$OWNER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$OWNER"
  fi
  dir="$(mktemp -d /tmp/ferflow-pg.XXXXXX)"
  chmod 755 "$dir"
  pw="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf '%s\n' "$pw" >"$dir/pwfile"
  [ "$(id -u)" = 0 ] && chown -R "$OWNER" "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U ferflow --pwfile="$dir/pwfile" \
    --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off" start >&2 \
    || { cat "$dir/server.log" >&2; die "pg_ctl start failed"; }
  for db in optuna mlflow; do
    as_owner "$bin/createdb" -h "$dir" -p "$port" -U ferflow "$db"
  done
  echo "$dir postgresql+psycopg2://ferflow:${pw}@127.0.0.1:${port}"
}

stop() {
  local dir="${1:?usage: postgres.sh stop DIR}" bin
  case "$dir" in /tmp/ferflow-pg.*) ;; *) die "refusing to stop/remove $dir (not a postgres.sh directory)";; esac
  bin="$(bindir)"
  OWNER="$(stat -c %U "$dir")"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
  fi
  rm -rf "$dir"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install_pg ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) die "usage: $0 install | start [PORT] | stop DIR" 2 ;;
esac
