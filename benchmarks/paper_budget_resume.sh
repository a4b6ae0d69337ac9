#!/bin/bash
# Show that `l2o reproduce --budget paper` starts, plans, stops on Ctrl-C and resumes on a CPU:
# start it, send Ctrl-C (SIGINT to its process group, as a terminal does) after SECONDS, run the
# same command again, Ctrl-C again, and print the training's epoch count after each run.
#
#   bash benchmarks/paper_budget_resume.sh [OUT=runs/fig5-paper] [SECONDS=100]
#
# (A background job starts with SIGINT ignored; the python wrapper restores the default, as a
# terminal has it, so the Ctrl-C path is the one a user gets.)
set -u
cd "$(dirname "$0")/.." && source .venv/bin/activate
out=${1:-runs/fig5-paper}
wait_s=${2:-100}
for run in 1 2; do
  echo "=== run $run $(date +%T)"
  setsid python -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
    l2o reproduce fig5 --budget paper --out "$out" --jobs 1 &
  pid=$!
  sleep "$wait_s"
  kill -INT -- "-$pid"
  wait "$pid"; echo "=== exit status $? $(date +%T)"
  echo "epochs done: $(grep -c '"type": "epoch"' "$out/train/dm-paper/metrics.jsonl")"
  tail -n 1 "$out/train/dm-paper/metrics.jsonl" | cut -c1-200
done
