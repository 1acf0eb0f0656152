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
# Without CAP_SYS_ADMIN (Cloud Run, Docker's default capabilities): a keeper in a user
# namespace mounts writable cgroups of the container's own (start_keeper).
# Where nothing applies (no user namespaces; a host cgroup namespace on v2), nothing
# changes: the jail falls back to rlimits and its memory watchdog, which it logs and
# reports in /health.
CG=/sys/fs/cgroup

# One line of its own, as every line of the image is: a JSON object with a severity (the words
# said here hold no quote or backslash, but are escaped anyway), or text with
# PYSANDBOX_LOG_FORMAT=text. Each says how the jail's limits fall back: a WARNING, unless INFO
# is given first.
say() {
    severity=WARNING
    if [ "$1" = INFO ]; then severity=INFO; shift; fi
    if [ "${PYSANDBOX_LOG_FORMAT:-json}" = text ]; then
        echo "entrypoint: $*" >&2
        return
    fi
    message=$(printf '%s' "$*" | sed 's/\\/\\\\/g; s/"/\\"/g')
    printf '{"severity":"%s","logger":"entrypoint","message":"%s","time":"%s"}\n' \
        "$severity" "$message" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >&2
}

# cgroup v2 (Docker's default on current hosts: a private cgroup namespace whose root is
# the container's own cgroup). The kernel lets a cgroup hand controllers to children only
# while it holds no process itself, so this container's processes move into a leaf,
# service/, first; then memory, pids and cpu go to NSJAIL/ and on to each run's cgroup.
delegate() {
    mkdir -p "$CG/service" || return 1
    for pid in $(cat "$CG/cgroup.procs"); do
        echo "$pid" > "$CG/service/cgroup.procs" 2>/dev/null || true
    done
    mkdir -p "$CG/NSJAIL" || return 1
    for controller in memory pids cpu; do
        echo "+$controller" > "$CG/cgroup.subtree_control" 2>/dev/null &&
            echo "+$controller" > "$CG/NSJAIL/cgroup.subtree_control" 2>/dev/null ||
            say "could not delegate the $controller controller; rlimits enforce that limit"
    done
}

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
            start_keeper v2
            return
        fi
        remounted=1
    fi
    delegate
    if [ -n "$remounted" ]; then
        mount --bind "$CG/NSJAIL" "$CG/NSJAIL" && mount -o remount,bind,ro "$CG" ||
            say "could not make $CG read-only again outside NSJAIL/"
    fi
}

# cgroup v1: Docker bind-mounts the container's OWN cgroup (/docker/<id>) of each
# controller at /sys/fs/cgroup/<controller>, read-only.
setup_v1() {
    remount_failed=
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
            remount_failed=1
        fi
    done
    if [ -n "$remount_failed" ]; then
        start_keeper v1
    fi
}

# Without CAP_SYS_ADMIN (Docker's default capabilities, Cloud Run) the container's cgroup
# mounts stay read-only. A user namespace that owns a cgroup namespace may mount cgroup2,
# and the container's existing cgroup v1 hierarchies, and manage the cgroups below its root
# (rootless Podman gets its cgroups so). A keeper process does that in namespaces of its own
# and then only sleeps: the service reaches its mounts through /proc/<keeper>/root/sys/fs/cgroup
# (jail/settings.py). Its user namespace maps root to root and nothing else. As above, only
# NSJAIL/ stays writable there: the container's own limits are files of the namespace's root
# cgroup, which the keeper leaves read-only (and which cgroup v2 keeps read-only from inside
# the namespace anyway). The mounts go over a tmpfs: on the container's own cgroup2 mount
# point the kernel answers EBUSY.
keeper() {
    mount -t tmpfs -o size=4k,mode=755 pysandbox-cgroup "$CG" || exit 1
    if [ "$1" = v2 ]; then
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$CG" && delegate &&
            mount --bind "$CG/NSJAIL" "$CG/NSJAIL" && mount -o remount,bind,ro "$CG" || exit 1
    else
        keeper_v1 || exit 1
    fi
    echo "$$"
    exec sleep infinity >/dev/null 2>&1 </dev/null
}

# Each v1 controller's hierarchy, mounted with the controllers it shares (cpu,cpuacct on
# some hosts): the kernel mounts an existing hierarchy only with its exact set.
keeper_v1() {
    found=
    for controller in memory pids cpu; do
        options=$(sed -n "s/^[0-9]*:\(\([^:]*,\)\{0,1\}$controller\(,[^:]*\)\{0,1\}\):.*/\1/p" \
                  /proc/self/cgroup)
        [ -n "$options" ] || continue
        dir=$CG/$controller
        if mkdir "$dir" && mount -t cgroup -o "nosuid,nodev,noexec,$options" cgroup "$dir" &&
                mkdir -p "$dir/NSJAIL" && mount --bind "$dir/NSJAIL" "$dir/NSJAIL" &&
                mount -o remount,bind,ro "$dir"; then
            found=1
        else
            say "could not mount the $controller cgroup in a user namespace; rlimits enforce that limit"
        fi
    done
    [ -n "$found" ]
}

start_keeper() {
    if [ "${PYSANDBOX_USERNS_CGROUPS:-true}" = false ]; then
        say "$CG is read-only and PYSANDBOX_USERNS_CGROUPS=false; the jail uses rlimits instead"
        return
    fi
    # The keeper says its pid once its mounts are ready, then closes the pipe read here.
    pid=$(unshare --user --map-root-user --mount --cgroup "$0" --cgroup-keeper "$1" &)
    case "$pid" in
        ''|*[!0-9]*)
            say "$CG is read-only and no user namespace could mount a writable cgroup $1;" \
                "the jail uses rlimits instead" ;;
        *)
            export PYSANDBOX_CGROUP_KEEPER="$pid"
            say INFO "cgroup $1 through a user namespace (keeper pid $pid)" ;;
    esac
}

if [ "${1:-}" = --cgroup-keeper ]; then
    keeper "$2"
fi
if [ -f "$CG/cgroup.controllers" ]; then
    setup_v2
else
    setup_v1
fi
exec "$@"
