#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL and Redis on loopback ports for the tests.
#
#   bash scripts/services.sh start DIR   # prints the export lines for the test URLs
#   bash scripts/services.sh stop DIR
#   bash scripts/services.sh stop-pg|start-pg|stop-redis|start-redis DIR   # one of them, same port
#
# PostgreSQL comes from the installed binaries (initdb refuses to run as root, so as root the
# cluster belongs to the `postgres` user); Redis is Debian's redis-server. Nothing is persisted
# (so a Redis stopped and started again has lost its messages, as fault tests want). The ports are
# kept in DIR/pg.port and DIR/redis.port for the single-service commands.
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?a working directory}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_bin() {
  local found
  found=$(command -v initdb 2>/dev/null || true)
  if [ -z "$found" ]; then
    found=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
  fi
  [ -n "$found" ] || { echo "services: PostgreSQL's initdb not found" >&2; exit 1; }
  dirname "$(readlink -f "$found")"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  mkdir -p "$dir"
  local bin pg_port redis_port
  bin=$(pg_bin)
  pg_port=$(free_port)
  redis_port=$(free_port)
  if [ "$(id -u)" = 0 ]; then
    id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    mkdir -p "$dir/pg"
    chown postgres "$dir/pg"
    chmod 755 "$dir"
  else
    mkdir -p "$dir/pg"
  fi
  as_pg "$bin/initdb" -D "$dir/pg/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1
  echo "$pg_port" >"$dir/pg.port"
  echo "$redis_port" >"$dir/redis.port"
  start-pg
  start-redis
  echo "export ACTQ_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:$pg_port/postgres"
  echo "export ACTQ_TEST_BROKER_URL=redis://127.0.0.1:$redis_port/0"
}

start-pg() {
  local pg_port
  pg_port=$(cat "$dir/pg.port")
  as_pg "$(pg_bin)/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 \
    -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
    start >/dev/null
}

start-redis() {
  local redis_port
  redis_port=$(cat "$dir/redis.port")
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"
  for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
}

stop-pg() {
  if [ -f "$dir/pg/data/postmaster.pid" ]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

stop-redis() {
  if [ -f "$dir/redis.pid" ]; then
    local pid
    pid=$(cat "$dir/redis.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$dir/redis.pid"
  fi
}

stop() {
  stop-pg
  stop-redis
}

"$cmd"
