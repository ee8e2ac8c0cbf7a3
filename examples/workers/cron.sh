#!/usr/bin/env bash
# The cron process: dispatches the schedules in examples/workers/schedules.py. Run one, or
# several for availability: each fire time is dispatched once however many run.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec jobkit cron --import examples.workers.schedules
