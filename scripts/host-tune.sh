#!/usr/bin/env bash
# Optional host tuning for sandbox start latency (`make host-tune`, as root).
#
# On a cgroup-v1 host, moving a process into a sandbox's cgroups waits for an RCU grace period
# (8-16 ms) after a quiet spell. A cgroup2 hierarchy mounted with `favordynmods` makes such moves
# skip that wait host-wide (forks and exits get slightly dearer). This remounts the host's
# cgroup2 mount with it; it lasts until reboot (add it to the mount's options to keep it).
# Without it Convoy keeps the lock warm with a helper thread while sandboxes start.
set -euo pipefail
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
  echo "cgroup v2 host: nothing to tune"
  exit 0
fi
target=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
if [ -z "$target" ]; then
  echo "no cgroup2 hierarchy mounted: nothing to tune (sandboxes use the warm-up helper)"
  exit 0
fi
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
