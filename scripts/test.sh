#!/usr/bin/env bash
# Install everything and run the whole test suite, with real PostgreSQL and Redis.
#
# System packages (redis-server, PostgreSQL) are installed with apt-get when missing (as root);
# Python packages go into .venv (torch first, pinned, then actq with its dev extras). PostgreSQL
# and Redis are started on free loopback ports for the run and stopped at the end, unless
# ACTQ_TEST_DATABASE_URL and ACTQ_TEST_BROKER_URL already point at running ones.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  || need_apt+=(postgresql)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]}"
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'

work=$(mktemp -d /tmp/actq-test.XXXXXX)
cleanup() {
  bash scripts/services.sh stop "$work" || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${ACTQ_TEST_DATABASE_URL:-}" ] || [ -z "${ACTQ_TEST_BROKER_URL:-}" ]; then
  eval "$(bash scripts/services.sh start "$work")"
  export ACTQ_TEST_DATABASE_URL ACTQ_TEST_BROKER_URL
fi
echo "test.sh: PostgreSQL at $ACTQ_TEST_DATABASE_URL, Redis at $ACTQ_TEST_BROKER_URL"

set +e
.venv/bin/python -m pytest -ra "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
