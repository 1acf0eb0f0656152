#!/bin/sh
# Container entrypoint: give nsjail the container's own cgroups (v2 or v1), then exec CMD.
#
# Both need CAP_SYS_ADMIN (DOCKER_RUN_FLAGS adds it; nsjail needs it anyway) to remount
# the container's read-only cgroup mount. Nothing above the container's own cgroup is
# reachable through it, so the host's cgroup tree stays out of sight. Afterwards only the
# NSJAIL/ subtree, where jail/ makes one cgroup per run, stays writable: the mount goes
# back to read-only, so the container's own limits (docker run --memory ...) cannot be
# changed through it.
#
# Where neither applies (no CAP_SYS_ADMIN, as on Cloud Run; a host cgroup namespace),
# nothing changes: the jail falls back to rlimits and its memory watchdog, which it logs
# and reports in /health.
CG=/sys/fs/cgroup

say() { echo "entrypoint: $*" >&2; }

# cgroup v2 (Docker's default on current hosts: a private cgroup namespace whose root is
# the container's own cgroup). The kernel lets a cgroup hand controllers to children only
# while it holds no process itself, so this container's processes move into a leaf,
# service/, first; then memory, pids and cpu go to NSJAIL/ and on to each run's cgroup.
setup_v2() {
    if [ "$(cat /proc/self/cgroup)" != "0::/" ]; then
        say "cgroup v2 without a private cgroup namespace; the jail uses rlimits instead"
        return
    fi
    if [ -d "$CG/NSJAIL" ] && [ -w "$CG/NSJAIL/cgroup.subtree_control" ]; then
        return                                       # already usable (a restart)
    fi
    remounted=
    if [ ! -w "$CG/cgroup.procs" ]; then
        if ! mount -o remount,rw "$CG" 2>/dev/null; then
            say "$CG is read-only and cannot be remounted (no CAP_SYS_ADMIN?); the jail uses rlimits instead"
            return
        fi
        remounted=1
    fi
    mkdir -p "$CG/service"
    for pid in $(cat "$CG/cgroup.procs"); do
        echo "$pid" > "$CG/service/cgroup.procs" 2>/dev/null || true
    done
    mkdir -p "$CG/NSJAIL"
    for controller in memory pids cpu; do
        echo "+$controller" > "$CG/cgroup.subtree_control" 2>/dev/null &&
            echo "+$controller" > "$CG/NSJAIL/cgroup.subtree_control" 2>/dev/null ||
            say "could not delegate the $controller controller; rlimits enforce that limit"
    done
    if [ -n "$remounted" ]; then
        mount --bind "$CG/NSJAIL" "$CG/NSJAIL" && mount -o remount,bind,ro "$CG" ||
            say "could not make $CG read-only again outside NSJAIL/"
    fi
}

# cgroup v1: Docker bind-mounts the container's OWN cgroup (/docker/<id>) of each
# controller at /sys/fs/cgroup/<controller>, read-only.
setup_v1() {
    for controller in memory pids cpu; do
        dir=$CG/$controller
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
                say "could not set up $dir/NSJAIL; the jail uses rlimits instead"
            fi
        else
            say "$dir is read-only and cannot be remounted (no CAP_SYS_ADMIN?);" \
                "the jail uses rlimits instead"
        fi
    done
}

if [ -f "$CG/cgroup.controllers" ]; then
    setup_v2
else
    setup_v1
fi
exec "$@"
