"""ruff and mypy, as configured in pyproject.toml, are clean on the code and the tests (`make test-unit`).

jail/harness.py and jail/zygote.py included: they are sent into the jail as one `python -c`
program, the zygote appended to the harness; a TYPE_CHECKING import shows checkers where the
zygote's names come from."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import REPO

CHECKED = ["api", "worker", "shared", "bench", "docker", "jail", "tests"]


@pytest.mark.parametrize("tool, args", [("ruff", ["check", *CHECKED]), ("mypy", [])])
def test_clean(tool, args):
    run = subprocess.run([str(Path(sys.executable).parent / tool), *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
