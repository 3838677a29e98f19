#!/bin/sh
# Entrypoint of the agentd image. agentd itself always runs as the unprivileged user agentd.
#
# Started as root (`docker run --user 0 --security-opt writable-cgroups=true ...`, cgroup v2):
# hands the container's own cgroup subtree to agentd for per-job limits, then drops to agentd
# with no capabilities. Started as agentd (the image's default USER): runs agentd directly; job
# cgroups then exist only if the runtime delegated a subtree some other way.
set -eu

if [ "$(id -u)" != 0 ]; then
  exec "$@"
fi

cg=/sys/fs/cgroup
# Writable only with cgroupns=private (the default on cgroup v2) and writable-cgroups=true.
if [ -f "$cg/cgroup.controllers" ] && [ -w "$cg/cgroup.subtree_control" ]; then
  # A cgroup that passes controllers to its children may hold no process itself: everything in
  # the container's cgroup (tini, this shell) moves to a leaf first.
  mkdir -p "$cg/init" "$cg/agentd/main"
  for pid in $(cat "$cg/cgroup.procs"); do
    echo "$pid" > "$cg/init/cgroup.procs" 2>/dev/null || true
  done
  echo "+memory +pids +cpu" > "$cg/cgroup.subtree_control"
  echo "+memory +pids +cpu" > "$cg/agentd/cgroup.subtree_control"
  # agentd (this shell, after the exec) lives in agentd/main and creates the job cgroups in
  # agentd/jobs (cgroup_parent = "agentd/jobs"): moving a process between two cgroups needs
  # write access to their common ancestor, so both sit under agentd/, which is handed over:
  # the directories and the files that shape the subtree, never agentd/'s own limit files.
  echo $$ > "$cg/agentd/main/cgroup.procs"
  for d in "$cg/agentd" "$cg/agentd/main"; do
    chown agentd:agentd "$d" "$d/cgroup.procs" "$d/cgroup.subtree_control" "$d/cgroup.threads"
  done
fi

exec setpriv --reuid=agentd --regid=agentd --init-groups --inh-caps=-all --bounding-set=-all -- "$@"
