#!/usr/bin/env bash
# Install everything the tests need into .venv/ and run the whole test suite.
# Usage: scripts/test.sh [PYTEST ARGS]   e.g. scripts/test.sh -m "not slow"
#
# With no arguments the suite runs in two phases: every test not marked `serial` on all cores at once
# (pytest-xdist, one worker per core, at most 4), then the `serial` ones (worker processes,
# heartbeats, signals, time limits) alone, so that no other test steals their CPU. With arguments,
# pytest runs once, in this process, with exactly those arguments.
#
# The service tests need PostgreSQL: with $STRUCTSEARCH_TEST_DATABASE_URL unset, a throwaway
# cluster is started here (scripts/postgres.sh; installs Debian's server package if needed) and
# removed afterwards. If none can be had, the service tests skip and say why.
# tests/test_compose.py parses docker-compose.yml with Debian's docker-compose (no engine needed):
# installed here as root when missing, else that test skips and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev,service
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if ! command -v docker-compose >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "scripts/test.sh: installing Debian's docker-compose (to validate docker-compose.yml)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; } >&2 \
    || echo "scripts/test.sh: docker-compose could not be installed; tests/test_compose.py will skip" >&2
fi

pgdir=""
if [ -z "${STRUCTSEARCH_TEST_DATABASE_URL:-}" ]; then
  if exports="$(scripts/postgres.sh start)"; then
    eval "$exports"
    pgdir="$STRUCTSEARCH_TEST_PGDIR"
  else
    echo "scripts/test.sh: no PostgreSQL could be started; the service tests will skip" >&2
  fi
fi
stop_postgres() { [ -n "$pgdir" ] && scripts/postgres.sh stop "$pgdir" || true; }
trap stop_postgres EXIT

if [ $# -gt 0 ]; then
  .venv/bin/python -m pytest "$@"
  exit 0  # (set -e: a failing run has exited with its status already)
fi
workers="$(nproc 2>/dev/null || echo 1)"
workers=$(( workers > 4 ? 4 : workers ))
rc=0
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -n "$workers" -m "not serial" || rc=$?
.venv/bin/python -m pytest -m serial || { r=$?; [ "$rc" = 0 ] && rc=$r; }
exit "$rc"
