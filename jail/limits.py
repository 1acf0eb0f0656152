"""Per-run resource limits for one jailed script."""
import math
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one run may use. Every field is enforced by the jail or by the reader of its output."""

    timeout_s: float = 5.0
    """Wall time from start to the kill of the whole jail (children and stopped processes too)."""
    memory_mb: int = 256
    """Memory of the whole jail (cgroup), or address space per process (RLIMIT_AS) without cgroups."""
    max_pids: int = 32
    """Processes and threads at once."""
    max_output_bytes: int = 1 * MIB
    """stdout and stderr together; past it the run is killed and the output truncated."""
    max_result_bytes: int = 1 * MIB
    """main()'s JSON-encoded return value."""
    tmp_mb: int = 16
    """Size of the writable tmpfs /tmp, and the largest file the script may write."""
    max_open_files: int = 64
    """File descriptors per process."""
    max_files_out: int = 16
    """Files returned from out/; past it the rest are left out (files_truncated)."""
    max_files_out_bytes: int = 8 * MIB
    """Their total size (raw bytes), likewise."""

    @property
    def max_report_bytes(self) -> int:
        """The most the harness's report may take on its channel: the result's JSON and the
        files' base64 (4/3) with their names (at most 1024 characters, 6 bytes each as JSON)."""
        return (self.max_result_bytes + math.ceil(self.max_files_out_bytes * 4 / 3)
                + self.max_files_out * (6 * 1024 + 64))

    @property
    def cpu_s(self) -> int:
        """RLIMIT_CPU, and nsjail's own time limit: a second past the wall limit, a backstop."""
        return math.ceil(self.timeout_s) + 1
