"""This host's cgroups as jail/cgroups.py sees them (the v2 side is proven in the VM tier,
tests/vm/test_cgroup_v2.py): what it detects, and the sweep of what killed processes left."""
import os
import time
import uuid

import pytest

from jail import cgroups
from jail.nsjail import host_cgroups


@pytest.fixture
def host() -> cgroups.Cgroups:
    found = host_cgroups()
    if not found.available:
        pytest.fail(f"these tests need the host's cgroups: {found.missing_reason}")
    return found


def test_enforcement_names_the_hierarchy(host):
    assert host.enforcement.value == f"cgroup v{host.version}"
    assert cgroups.Cgroups(host.root, frozenset(), "none").enforcement is cgroups.Enforcement.RLIMITS


def test_sweep_removes_only_old_empty_run_cgroups(host):
    old, young = f"run-{uuid.uuid4().hex}", f"run-{uuid.uuid4().hex}"
    long_ago = time.time() - 2 * cgroups.STALE_AFTER_S
    for parent in cgroups.parents(host):
        (parent / old / "NSJAIL.1").mkdir(parents=True)
        (parent / young).mkdir()
        os.utime(parent / old, (long_ago, long_ago))
    try:
        assert cgroups.sweep_stale(host) >= len(cgroups.parents(host))
        for parent in cgroups.parents(host):
            assert not (parent / old).exists()
            assert (parent / young).exists()
    finally:
        for parent in cgroups.parents(host):
            for path in (parent / old / "NSJAIL.1", parent / old, parent / young):
                if path.exists():
                    path.rmdir()


def test_a_run_leaves_no_cgroup_behind(host):
    from jail import Limits
    from jail.nsjail import run_once

    before = {path.name for parent in cgroups.parents(host) for path in parent.glob("run-*")}
    assert run_once("import os\ndef main():\n    os.fork()\n    return 1", Limits()).ok
    after = {path.name for parent in cgroups.parents(host) for path in parent.glob("run-*")}
    assert after <= before
