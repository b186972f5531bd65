#!/usr/bin/env bash
# Idle shutdown of the housegan GPU worker, run every minute by housegan-idle.timer.
#
# "Busy" means a process whose command line matches HOUSEGAN_BUSY_PATTERN is running: by default
# a flow run the Prefect process worker started (`python -m prefect.engine`) or a training
# process (`housegan.gan.train`, e.g. under torchrun). While busy, the time is written to the
# state file; once nothing has been busy for HOUSEGAN_IDLE_MINUTES, the machine shuts down, and
# because it was launched with InstanceInitiatedShutdownBehavior=terminate, it is terminated
# (a stopped GPU instance would still bill its volume and keep its spot request).
set -euo pipefail

idle_minutes="${HOUSEGAN_IDLE_MINUTES:?set HOUSEGAN_IDLE_MINUTES}"
state="${HOUSEGAN_IDLE_STATE:-/var/lib/housegan/last-busy}"
pattern="${HOUSEGAN_BUSY_PATTERN:--m prefect\.engine|housegan\.gan\.train}"
shutdown_cmd="${HOUSEGAN_SHUTDOWN_CMD:-/sbin/shutdown -h now}"

now="$(date +%s)"
if pgrep -f -- "$pattern" >/dev/null; then
  echo "$now" >"$state"
  echo "busy: a flow run or training is in progress"
  exit 0
fi
# No record yet (first run after boot): the idle time counts from now.
if [[ ! -s "$state" ]]; then
  echo "$now" >"$state"
fi
last="$(cat "$state")"
idle=$(((now - last) / 60))
if ((idle >= idle_minutes)); then
  echo "idle for ${idle} min (limit ${idle_minutes}): shutting down; the instance terminates"
  # Word splitting is wanted: the command comes with its arguments.
  # shellcheck disable=SC2086
  exec $shutdown_cmd
fi
echo "idle for ${idle} of ${idle_minutes} min"
