#!/bin/sh
# Container entrypoint: give nsjail the container's own cgroup v1 controllers, then exec CMD.
#
# With cgroup v1, Docker bind-mounts the container's OWN cgroup (/docker/<id>) of each
# controller at /sys/fs/cgroup/<controller>, read-only. With CAP_SYS_ADMIN (which nsjail
# needs anyway) that bind mount can be made writable: nothing above the container's own
# cgroup is reachable through it, so the host's cgroup tree stays out of sight. Only the
# NSJAIL/ subtree, where jail/ makes one cgroup per run, stays writable: the controller
# mount goes back to read-only, so the container's own limits (docker run --memory ...)
# cannot be changed through it.
#
# Where this does not apply (cgroup v2 hosts, no CAP_SYS_ADMIN), nothing changes and the
# jail falls back to rlimits, which it logs and reports in /health.
for controller in memory pids cpu; do
    dir=/sys/fs/cgroup/$controller
    [ -e "$dir/cgroup.procs" ] || continue          # no cgroup v1 hierarchy here
    if [ -d "$dir/NSJAIL" ] && [ -w "$dir/NSJAIL" ]; then
        continue                                    # already usable
    fi
    if [ -w "$dir" ]; then
        mkdir -p "$dir/NSJAIL"                      # writable already (e.g. --privileged)
        continue
    fi
    if mount -o remount,bind,rw "$dir" 2>/dev/null; then
        if mkdir -p "$dir/NSJAIL" && mount --bind "$dir/NSJAIL" "$dir/NSJAIL"; then
            mount -o remount,bind,ro "$dir"
        else
            mount -o remount,bind,ro "$dir"
            echo "entrypoint: could not set up $dir/NSJAIL; the jail uses rlimits instead" >&2
        fi
    else
        echo "entrypoint: $dir is read-only and cannot be remounted (no CAP_SYS_ADMIN?);" \
             "the jail uses rlimits instead" >&2
    fi
done
exec "$@"
