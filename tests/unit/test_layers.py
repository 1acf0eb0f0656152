"""One direction of imports: jail <- shared <- {api | worker}.

`jail` imports none of the service's packages; `shared` imports `jail` only, and no web framework;
`api` and `worker` never import each other. A worker process loads no Flask."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import REPO

FORBIDDEN = {
    "jail": {"shared", "api", "worker", "flask", "werkzeug", "flask_limiter"},
    "shared": {"api", "worker", "flask", "werkzeug", "flask_limiter"},
    "api": {"worker"},
    "worker": {"api", "flask", "werkzeug", "flask_limiter"},
}


def imported(path: Path) -> set[str]:
    """The top-level names of the modules a file imports (absolute imports; the packages use no
    relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    broken = {str(path.relative_to(REPO)): sorted(imported(path) & FORBIDDEN[package])
              for path in sorted((REPO / package).rglob("*.py"))}
    assert {path: names for path, names in broken.items() if names} == {}


def test_a_worker_loads_no_flask():
    code = ("import sys, worker.__main__, worker.jobs; "
            "sys.exit(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'api')) or None)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
