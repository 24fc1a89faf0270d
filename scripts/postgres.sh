#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the service tests (and for trying the service locally).
#
#   eval "$(scripts/postgres.sh start)"   # prints `export STRUCTSEARCH_TEST_DATABASE_URL=...` (+ PGDATA dir)
#   scripts/postgres.sh stop [DIR]        # stops the cluster started above and deletes its files
#
# start: finds the server binaries (/usr/lib/postgresql/*/bin; installs Debian's `postgresql`
# package with apt-get when they are missing and we are root), initdb's a fresh cluster in a temp
# dir, starts it on a free port on 127.0.0.1 (trust auth, no fsync: it is throwaway), and creates
# the database `structsearch_test`. initdb refuses to run as root, so as root the cluster belongs
# to the `postgres` user (created by the Debian package; created here if absent).
# Diagnostics go to stderr; stdout carries only the export lines, so `eval` is safe.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

find_bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$d" ] && command -v pg_ctl >/dev/null 2>&1; then
    d="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
  fi
  echo "$d"
}

install_server() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "no PostgreSQL server binaries and cannot install them (need root and apt-get)"
    exit 1
  fi
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
}

free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# Run a command as the cluster's owner (root cannot own a cluster).
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$owner" -- "$@"
  else
    "$@"
  fi
}

start() {
  local bindir dir port url
  bindir="$(find_bindir)"
  if [ -z "$bindir" ]; then
    install_server
    bindir="$(find_bindir)"
  fi
  [ -x "$bindir/initdb" ] || { log "initdb not found in '$bindir'"; exit 1; }
  owner="$(id -un)"
  if [ "$(id -u)" = 0 ]; then
    owner=postgres
    id -u "$owner" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$owner"
  fi
  dir="$(mktemp -d "${TMPDIR:-/tmp}/structsearch-pg.XXXXXX")"
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown "$owner" "$dir"
  as_owner "$bindir/initdb" -D "$dir/data" -U structsearch --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  port="$(free_port)"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >&2 || { cat "$dir/server.log" >&2; exit 1; }
  as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U structsearch structsearch_test
  url="postgresql+psycopg://structsearch@127.0.0.1:$port/structsearch_test"
  log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') running on 127.0.0.1:$port (files in $dir)"
  echo "export STRUCTSEARCH_TEST_DATABASE_URL='$url'"
  echo "export STRUCTSEARCH_TEST_PGDIR='$dir'"
}

stop() {
  local dir="${1:-${STRUCTSEARCH_TEST_PGDIR:-}}" bindir
  [ -n "$dir" ] && [ -d "$dir/data" ] || { log "no cluster dir given (or \$STRUCTSEARCH_TEST_PGDIR)"; exit 1; }
  bindir="$(find_bindir)"
  owner="$(stat -c %U "$dir/data")"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start | stop [DIR]" >&2; exit 2 ;;
esac
