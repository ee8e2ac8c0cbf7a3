#!/usr/bin/env bash
# Worker for the `scheduled` queue: delayed jobs (the follow-up email, sent days after
# signup). Medium concurrency. On RQ this worker also moves jobs whose time has come onto
# the queue; while no worker serves a queue, the dispatcher sends its jobs to Temporal.
#
# Shutdown: as for every jobkit worker, SIGTERM finishes running jobs; a delayed job that
# has not come due yet is not held by any worker and needs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec jobkit worker --queue scheduled --concurrency 10 \
    --engine rq --engine temporal --import examples.app.jobs
