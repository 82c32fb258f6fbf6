#!/usr/bin/env bash
# A job longer than one device call (10 min a command; the machine stays warm 30 s after each): start it in the
# background, then poll it call after call. Results come back only through $OUT (8 files, 16 MiB each), so `poll`
# packs the job's log and its light result files (json, md, csv, png, txt) into one archive.
#
# Here, once per fresh checkout (the GPU image has no PyAV; NVML's reader is optional):
#   benchmarks/device_job.sh wheels
# On the device (each call carries .whl; name it in `carry`):
#   benchmarks/device_job.sh start l -- python stage0_poc/run.py --device cuda --rung l --out /tmp/runs
#   benchmarks/device_job.sh poll l 570        # within 30 s of the last call: waits <= 570 s or until the job ends
#
# `start` copies the working tree to /tmp/src/NAME and runs there, so that later calls (which sync the tree over the
# repository) do not change the code under a running job; its output goes to /tmp/jobs/NAME.log and its exit status
# to /tmp/jobs/NAME.rc. `poll` prints the log's tail and writes $OUT/NAME.tgz: the log and every light file under the
# job's --out folder (what a report needs: no weights, no caches, no videos).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=/tmp/jobs

wheels() {  # the wheels the GPU image lacks, for its Python (3.12, x86_64); PyAV at the version installed here
  local py=python3 av
  [ -x .venv/bin/python ] && py=.venv/bin/python
  av=$("$py" -c 'import av; print(av.__version__)' 2>/dev/null) \
    || { echo "error: no PyAV in $py: set up the README's venv first" >&2; exit 1; }
  mkdir -p .whl
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "av==$av" nvidia-ml-py
  grep -qx '.whl/' .git/info/exclude 2>/dev/null || echo '.whl/' >> .git/info/exclude
  ls -l .whl
}

install() {  # the carried wheels into /tmp/site (once per machine)
  if [ ! -d /tmp/site ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site .whl/*.whl
  fi
}

start() {
  local name=$1; shift
  [ "${1:-}" = "--" ] && shift
  install
  mkdir -p "$JOBS"
  if [ -f "$JOBS/$name.pid" ] && kill -0 "$(cat "$JOBS/$name.pid")" 2>/dev/null; then
    echo "job $name is already running (pid $(cat "$JOBS/$name.pid"))"; exit 1
  fi
  rm -rf "/tmp/src/$name" "$JOBS/$name.rc"
  mkdir -p "/tmp/src/$name"
  # the tree as it is now (the device's .git may be stale, so not `git ls-files`)
  tar --exclude=./.git --exclude=./.whl --exclude=./runs --exclude=./.venv --exclude=./.chromium -cf - . \
    | tar -C "/tmp/src/$name" -xf -
  printf '%q ' "$@" > "$JOBS/$name.cmd"
  (cd "/tmp/src/$name" && PYTHONPATH=".:/tmp/site" PYTHONUNBUFFERED=1 setsid nohup bash -c \
    "$(cat "$JOBS/$name.cmd"); echo \$? > $JOBS/$name.rc" > "$JOBS/$name.log" 2>&1 & echo $! > "$JOBS/$name.pid")
  echo "started $name: $(cat "$JOBS/$name.cmd")(log $JOBS/$name.log)"
}

poll() {
  local name=$1 wait=${2:-0} t=0
  while [ ! -f "$JOBS/$name.rc" ] && [ "$t" -lt "$wait" ]; do sleep 5; t=$((t + 5)); done
  tail -c 6000 "$JOBS/$name.log" || true
  if [ -f "$JOBS/$name.rc" ]; then
    echo "job $name ended: exit $(cat "$JOBS/$name.rc")"
  else
    echo "job $name running"
  fi
  [ -n "${OUT:-}" ] || return 0
  local out
  # the job's --out folder, read from its words unquoted (`bash -c "... --out DIR ..."` is one %q-escaped word)
  out=$(eval "printf '%s ' $(cat "$JOBS/$name.cmd")" | grep -oE -- '--out[ =][^ ]+' | head -1 | cut -c7- || true)
  (cd / && find "${out:-/nonexistent}" -type f \( -name '*.json' -o -name '*.md' -o -name '*.csv' -o -name '*.png' \
     -o -name '*.txt' \) -size -4M 2>/dev/null; echo "$JOBS/$name.log"; echo "$JOBS/$name.cmd") \
    | tar czf "$OUT/$name.tgz" -T - 2>/dev/null || true
}

case "${1:-}" in
  wheels) wheels ;;
  start) shift; start "$@" ;;
  poll) shift; poll "$@" ;;
  *) echo "usage: $0 wheels | start NAME -- COMMAND... | poll NAME [SECONDS]" >&2; exit 2 ;;
esac
