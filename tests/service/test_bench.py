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
    probes = re.findall(r"^(trivial|numpy|pandas)\s+(\d+)\s+[\d.]+\s+(\d+)\s+[\d.]+\s+[\d.]+$",
                        done.stdout, re.M)
    assert [name for name, *_ in probes] == ["trivial", "numpy", "pandas"], done.stdout
    assert all(int(before) > 0 for _, before, _ in probes), done.stdout  # the probe saw the run's faults
    assert int(probes[2][2]) > int(probes[0][2]), done.stdout  # pandas faults in main(), trivial hardly
    cpu = re.findall(r"^(trivial|numpy|pandas)\s+([14])(\s+[\d.]+){4}$", done.stdout, re.M)
    assert len(cpu) == 6, done.stdout  # CPU per request: a few requests may not span a tick
    assert re.search(r"^floors: a bare fork \+ exit .* [\d.]+ ms; a request answered without a jail "
                     r"\(400\) [\d.]+ ms", done.stdout, re.M), done.stdout
    assert len(re.findall(r"^(trivial|pandas)\s+[12]\s+3\s+[\d.]+$", done.stdout, re.M)) == 4
