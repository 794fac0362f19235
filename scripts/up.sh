#!/usr/bin/env bash
# make up: the web app, a GPU worker and beat in one terminal. Ctrl-C or SIGTERM stops all three:
# SIGTERM first (the worker takes a warm shutdown and finishes its job), SIGKILL for whatever still
# runs after UP_STOP_GRACE_S (that job is requeued when a worker starts again), or at a second Ctrl-C.
# If one of them (or make) exits on its own, the others are stopped too. No `kill 0`: it signals make
# and this shell as well, and the trap ran again for its own signal.
set -uo pipefail

PY=${PY:-.venv/bin/python}
PORT=${PORT:-8000}
GRACE=${UP_STOP_GRACE_S:-10}
pids=()

stop() {  # $1: this script's exit status
  exec 3>&2 2>/dev/null  # no "Killed" notices from bash; the children keep their own stderr
  trap 'kill -KILL "${pids[@]}"' INT TERM HUP
  kill -TERM "${pids[@]}"
  for _ in $(seq $((GRACE * 10))); do
    kill -0 "${pids[@]}" || break
    sleep 0.1
  done
  if kill -0 "${pids[@]}"; then
    echo "up: still running after ${GRACE}s (a job rendering?); killing it, its job is requeued at the next start" >&3
    kill -KILL "${pids[@]}"
  fi
  wait
  exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM
trap 'stop 129' HUP  # the terminal closed

# Each child in its own process group: the terminal's Ctrl-C reaches make and this script only, and
# each child gets exactly one SIGTERM from stop (beat was seen to hang when the terminal's SIGINT and
# a SIGTERM arrived together). Only ever run with &: it execs.
own_group() { exec "$PY" -c 'import os, sys; os.setpgid(0, 0); os.execvp(sys.argv[1], sys.argv[1:])' "$@"; }

own_group "$PY" -m celery -A workers.celery_app worker -Q gpu,celery --pool solo --concurrency 1 -n gpu@%h \
  --loglevel INFO &
pids+=($!)
# One beat per broker (it schedules the reconciler); in its own process, as in docker-compose.yml.
own_group "$PY" -m celery -A workers.celery_app beat --schedule "${VAR_DIR:-var}/celerybeat-schedule" \
  --loglevel INFO &
pids+=($!)
own_group "$PY" manage.py runserver "127.0.0.1:$PORT" --noreload &
pids+=($!)

# Until one of them exits, or make does (GNU make exits on a SIGTERM of its own without passing it on).
while kill -0 "$PPID" 2>/dev/null; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; stop $?; }
  done
  sleep 1 &
  wait $!  # a trap runs at once here, not after a foreground sleep
done
stop 143
