#!/usr/bin/env bash
# Optional host tuning for sandbox start latency (`make host-tune`, as root). Both settings are
# host-wide and last until reboot; neither is needed for Convoy to work.
#
# 1. Expedited RCU grace periods (/sys/kernel/rcu_expedited = 1). Every runsc command waits for
#    an RCU grace period while it starts (its Go init registers with membarrier(2)): about 10 ms
#    of its 19 ms start-up here, paid several times per gVisor sandbox. Expedited grace periods
#    cost an IPI to each CPU instead. Keep it across reboots with the kernel parameter
#    rcupdate.rcu_expedited=1.
# 2. On a cgroup-v2 host, `favordynmods` on /sys/fs/cgroup. Convoy moves each bubblewrap
#    command's first process into its sandbox's cgroup by pid there, and such a move waits for
#    an RCU grace period after a quiet spell unless cgroup2 is mounted with it (forks and exits
#    get slightly dearer). On a cgroup-v1 host there is nothing to do: commands are born in
#    their cgroups.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "run as root (it writes /sys/kernel/rcu_expedited and may remount /sys/fs/cgroup)" >&2
  exit 1
fi
if [ -w /sys/kernel/rcu_expedited ]; then
  echo 1 > /sys/kernel/rcu_expedited
  echo "rcu_expedited = 1 (until reboot; kernel parameter rcupdate.rcu_expedited=1 keeps it)"
else
  echo "no writable /sys/kernel/rcu_expedited here: skipped"
fi
if [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
  echo "cgroup v1 host: no cgroup tuning needed (sandbox commands are born in their cgroups)"
  exit 0
fi
target=/sys/fs/cgroup
if awk -v t="$target" '$2 == t { print $4 }' /proc/self/mounts | tr , '\n' | grep -qx favordynmods; then
  echo "$target already has favordynmods"
  exit 0
fi
mount -o remount,favordynmods "$target"
echo "remounted $target with favordynmods (until reboot)"
