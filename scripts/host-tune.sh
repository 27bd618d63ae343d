#!/usr/bin/env bash
# Optional host tuning for sandbox start latency (`make host-tune`, as root).
#
# On a cgroup-v2 host, Convoy moves each bubblewrap command's first process into its sandbox's
# cgroup by pid. Such a move takes a host-wide lock that, after a quiet spell, first waits for an
# RCU grace period (8-16 ms). Mounting cgroup2 with `favordynmods` makes moves skip that wait
# (forks and exits get slightly dearer). This remounts /sys/fs/cgroup with it; it lasts until
# reboot (add it to the mount's options to keep it).
# On a cgroup-v1 host there is nothing to tune: commands are born in their cgroups, no move.
set -euo pipefail
if [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
  echo "cgroup v1 host: nothing to tune (sandbox commands are born in their cgroups)"
  exit 0
fi
target=/sys/fs/cgroup
if awk -v t="$target" '$2 == t { print $4 }' /proc/self/mounts | tr , '\n' | grep -qx favordynmods; then
  echo "$target already has favordynmods"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: mount -o remount,favordynmods $target" >&2
  exit 1
fi
mount -o remount,favordynmods "$target"
echo "remounted $target with favordynmods (until reboot)"
