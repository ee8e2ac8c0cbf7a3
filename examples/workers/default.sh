#!/usr/bin/env bash
# Worker for the `default` queue: short IO-bound jobs (welcome emails, media lookups).
#
# Concurrency 50: these jobs spend their time waiting on the network, so one process runs
# many at once. To scale, run more copies of this script, on as many machines as needed.
#
# It serves the queue on both engines: RQ takes what is dispatched while Redis is healthy,
# Temporal what fell back while it was not. `--import` loads the job modules once, before
# any job runs; a worker runs only the jobs registered by them.
#
# Shutdown: SIGTERM (or Ctrl-C) finishes the running jobs and stops taking new ones; a
# second SIGTERM interrupts them and they go back to the queue for another worker. Give
# your process manager a stop timeout longer than your longest job (systemd's
# TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the job modules are imported as `examples.app.jobs`
exec jobkit worker --queue default --concurrency 50 \
    --engine rq --engine temporal --import examples.app.jobs
