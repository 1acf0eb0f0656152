"""The benchmark runs (smoke mode): every cell answered, no request failed."""
import re
import subprocess
import sys

from tests.support.servers import REPO


def test_benchmark_smoke_mode_completes_without_errors():
    done = subprocess.run([sys.executable, "bench/run.py", "--smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^(fast|naive)\s+(\w+)\s+(\d)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+(\d+)$",
                      done.stdout, re.M)
    assert len(rows) == 12, done.stdout
    assert all(errors == "0" for *_, errors in rows), done.stdout
    assert re.search(r"^idle warm jails: [1-9]", done.stdout, re.M), done.stdout
    assert len(re.findall(r"^(trivial|pandas)\s+[12]\s+3\s+[\d.]+$", done.stdout, re.M)) == 4
