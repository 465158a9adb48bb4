#!/usr/bin/env bash
# Install actq into .venv, start the embedded service (SQLite, one worker, the built-in
# tiny-gpt2) in the background, submit an example job, wait for it, and print its URLs.
#
#   bash scripts/quickstart.sh          # port 8000, data in .actq/
#   ACTQ_PORT=8080 bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
port=${ACTQ_PORT:-8000}
data=${ACTQ_DATA_DIR:-$PWD/.actq}
url="http://127.0.0.1:$port"

if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e .

mkdir -p "$data"
healthy() { .venv/bin/python -c "import urllib.request as u; u.urlopen('$url/healthz', timeout=2)" 2>/dev/null; }
if healthy; then
  echo "quickstart: a service already answers at $url"
else
  nohup .venv/bin/actq up --port "$port" --data-dir "$data" >"$data/up.log" 2>&1 &
  echo $! >"$data/up.pid"
  for _ in $(seq 300); do healthy && break; sleep 0.2; done
  healthy || { echo "quickstart: the service did not start; see $data/up.log" >&2; exit 1; }
fi

line=$(.venv/bin/actq --url "$url" submit batched_tdb examples/batched_tdb.json \
  --label quickstart --tag example --wait)
job=${line%% *}
cat <<DONE

actq is running at $url (log: $data/up.log; stop it with: kill \$(cat $data/up.pid))
example job:  $url/v1/jobs/$job
its result:   $url/v1/jobs/$job/result
all jobs:     $url/v1/jobs   (in a browser: $url/runs)
The built-in tiny-gpt2 has random weights: its top tokens are noise, its numbers are real.

To use the actq command, put .venv on PATH in your shell (from $PWD):
  source .venv/bin/activate
  actq history
DONE
