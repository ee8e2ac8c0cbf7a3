#!/usr/bin/env bash
# Worker for the `data_sync` queue: few, long jobs (the nightly catalog sync).
#
# Concurrency 1: one sync at a time per process keeps the load on the upstream API and on
# the database predictable; a long job here never holds up a welcome email, because
# `default` has workers of its own. Scale by running more copies (each runs one sync).
#
# Shutdown: SIGTERM lets a running sync finish (a deploy should allow for that); a second
# SIGTERM stops it at once, and a worker picks it up again from its last finished page.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec jobkit worker --queue data_sync --concurrency 1 \
    --engine rq --engine temporal --import examples.app.jobs
