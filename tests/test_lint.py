"""ruff and mypy, as configured in pyproject.toml, are clean on the service's code (part of `make test`).

jail/harness.py and jail/zygote.py are excluded there: they are sent into the jail as
`python -c` source text, the zygote appended to the harness, so neither stands alone."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO

CHECKED = ["api", "worker", "bench", "docker", "jail"]


@pytest.mark.parametrize("tool, args", [("ruff", ["check", *CHECKED]), ("mypy", [])])
def test_clean(tool, args):
    run = subprocess.run([str(Path(sys.executable).parent / tool), *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
