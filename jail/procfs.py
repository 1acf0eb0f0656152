"""What the host's /proc says about a run's processes: the tree, memory and CPU time.

Used where no cgroup does the accounting (jail/watchdog.py), and for warm runs on cgroup
v1 hosts, whose cgroups count no CPU time per run.
"""
import os

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live process below pid (not pid itself), through each thread's children."""
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", "rb") as file:
                    children = [int(child) for child in file.read().split()]
            except OSError:
                continue
            found += children
            stack += children
    return found


def anon_bytes(pid: int) -> int:
    """Resident anonymous memory of one process (pages it shares with a fork included)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            fields = file.read().split()
        return (int(fields[1]) - int(fields[2])) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def proportional_anon_bytes(pid: int) -> int:
    """Its proportional share of anonymous memory (shared pages split between sharers)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
            for line in file:
                if line.startswith(b"Pss_Anon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return anon_bytes(pid)


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of a live (or not yet reaped) process and of the children it waited for.

    Its own time is the larger of its live threads' exact run time (schedstat, ns) and the
    kernel's tick-rounded total (which also counts threads that have ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        utime, stime, cutime, cstime = (int(v) for v in stat[stat.rindex(b")") + 2:].split()[11:15])
        threads = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as file:
                threads += int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(threads, (utime + stime) * TICK_NS) + (cutime + cstime) * TICK_NS
