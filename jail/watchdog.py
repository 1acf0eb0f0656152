"""A run's total memory, bounded where no memory cgroup can be had (Cloud Run, Docker's
default capabilities): a sampler over the run's whole process tree.

RLIMIT_AS bounds each process by itself, so a run that forks could otherwise hold
max_pids times its limit. Every WATCH_INTERVAL_S (CLOSE_INTERVAL_S once past half its
limit) the pump (jail/pipes.py) asks the watchdog to add up the anonymous memory of every
process in the run's tree; past the limit, the whole run is killed as memory_limit. Pages
that forked processes still share are counted once: the cheap sum (RssAnon) counts them
in every process, so when it is over the limit the proportional share (Pss_Anon, which
walks page tables) decides.

Hand-rolled: no library samples a process tree against a shared budget. The slack is
what a run can fault in between two samples: SLACK_MB, which docs/security.md documents.
"""
import os
from dataclasses import dataclass, field

from jail.procfs import anon_bytes, descendants, proportional_anon_bytes

WATCH_INTERVAL_S = 0.01
CLOSE_INTERVAL_S = 0.002
"""How often a run past half its limit is sampled: it is watched more closely as it nears it."""
FAULT_MB_PER_CORE = 32
"""What one core can fault in between two samples near the limit, with room for the sampler
itself to be late: page faults run at a few GB/s a core at most (0.5 GB/s measured on this
project's 2-core machines)."""
SLACK_MB = FAULT_MB_PER_CORE * len(os.sched_getaffinity(0))
"""What a run may hold past its limit before a sample sees it: 64 MB on 2 cores."""


@dataclass
class MemoryWatch:
    """The memory of the processes below (and, with include_root, of) root_pid, against
    limit_bytes plus baseline_bytes (what a warm child inherits from its zygote)."""

    root_pid: int
    limit_bytes: int
    baseline_bytes: int = 0
    include_root: bool = False
    peak_bytes: int = field(default=0, init=False)
    interval_s: float = field(default=WATCH_INTERVAL_S, init=False)
    """When to sample next: sooner once the run holds more than half its limit."""

    def over_limit(self) -> bool:
        """Sample the tree now; True when the run holds more than its limit."""
        pids = descendants(self.root_pid)
        if self.include_root:
            pids.append(self.root_pid)
        allowed = self.limit_bytes + self.baseline_bytes
        held = sum(anon_bytes(pid) for pid in pids)
        if held > allowed:
            held = sum(proportional_anon_bytes(pid) for pid in pids)
        self.peak_bytes = max(self.peak_bytes, held - self.baseline_bytes)
        self.interval_s = CLOSE_INTERVAL_S if 2 * held > allowed else WATCH_INTERVAL_S
        return held > allowed
