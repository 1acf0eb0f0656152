"""PySandbox benchmark: warm jails ("fast") against one-off jails ("naive"), sync and async.

    .venv/bin/python bench/run.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/run.py --smoke    # seconds: checks that it works, not how fast
    .venv/bin/python bench/run.py --compare URL_A URL_B [--rounds 3]
                                             # the fast path (trivial, pandas; c=1, c=4) of two
                                             # running services, e.g. two images, in interleaved rounds

Starts the real service (gunicorn on loopback) once per mode, drives it with threads that
each keep one HTTP/1.1 connection, and prints one table: latency percentiles, requests
per second and errors per script and concurrency, the fast/naive ratios, the memory the
idle warm jails hold, and async (RQ) throughput with 1 and 2 workers. For the warm jails it
also says where a run's work goes: the faults and CPU time of the run's process between the
run's arrival and main() and in main(), and the CPU time per request of the service (the API
process), of the zygotes (forking) and of the runs' processes (their whole life). Run as root, after
`make venv jail-site` (the tests' prerequisites); redis-server must be installed.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
TICKS = os.sysconf("SC_CLK_TCK")

from jail.paths import paths  # noqa: E402
from tests.support.servers import gunicorn, redis_server, workers  # noqa: E402

SCRIPTS = {
    "trivial": 'def main():\n    return {"ok": 1}\n',
    "numpy": "import numpy as np\ndef main():\n    return float(np.arange(1000).reshape(10, 100).sum())\n",
    "pandas": ("import pandas as pd\ndef main():\n"
               "    df = pd.DataFrame({'k': ['a', 'b', 'a', 'c'] * 25, 'v': range(100)})\n"
               "    return df.groupby('k')['v'].sum().to_dict()\n"),
}
MODES = {"fast": {}, "naive": {"PYSANDBOX_WARM_JAILS": "0"}}
PROBE = """
import __main__ as _harness, resource as _resource
_main = main
def _spent(later, earlier):
    return [later.ru_minflt - earlier.ru_minflt,
            round((later.ru_utime + later.ru_stime - earlier.ru_utime - earlier.ru_stime) * 1e6)]
def main():
    arrived, started = _harness.RUN_RECEIVED, _resource.getrusage(_resource.RUSAGE_SELF)
    _main()
    return {"before": _spent(started, arrived),
            "in": _spent(_resource.getrusage(_resource.RUSAGE_SELF), started)}
"""
"""Appended to a script: its main() answers, instead of its result, the faults and CPU time (µs)
of the run's process from the run's arrival in its sealed child (RUN_RECEIVED, jail/zygote.py)
to main(), and in main()."""


@dataclass
class Cell:
    """One measured combination."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0


def post(conn: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, dict]:
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def drive(url: str, script: str, concurrency: int, seconds: float, at_most: int) -> Cell:
    """Send the script from `concurrency` threads for `seconds` (or `at_most` requests each)."""
    cell, lock = Cell(), threading.Lock()
    host, port = url.removeprefix("http://").split(":")
    stop_at = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for _ in range(at_most):
            if time.monotonic() >= stop_at:
                break
            start = time.perf_counter()
            status, _ = post(conn, "/execute", {"script": script})
            took = (time.perf_counter() - start) * 1000
            with lock:
                if status == 200:
                    cell.latencies_ms.append(took)
                else:
                    cell.errors += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cell.elapsed_s = time.monotonic() - start
    return cell


def where_time_goes(url: str, script: str, runs: int) -> dict[str, float]:
    """Medians over `runs` runs (one at a time) of the PROBE'd script: faults and CPU time (ms)
    between arrival and main(), in main(), and the run process's CPU time over its whole life
    (the answer's cpu_ms: from its fork, with what it did while waiting)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    seen: dict[str, list[float]] = {}
    for _ in range(runs):
        status, body = post(conn, "/execute", {"script": script + PROBE})
        if status != 200:
            raise RuntimeError(f"probe run failed: {body}")
        for key, value in (("faults before main", body["result"]["before"][0]),
                           ("ms before main", body["result"]["before"][1] / 1000),
                           ("faults in main", body["result"]["in"][0]),
                           ("ms in main", body["result"]["in"][1] / 1000),
                           ("ms whole life", body["cpu_ms"])):
            seen.setdefault(key, []).append(value)
    conn.close()
    return {key: statistics.median(values) for key, values in seen.items()}


FORK_FLOOR = """
import os, statistics, sys, time
sys.path.append(sys.argv[1])
import numpy, pandas
gc = __import__("gc"); gc.freeze()
took = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    took.append((time.perf_counter() - start) * 1000)
print(statistics.median(took))
"""
"""A process holding what a zygote holds (numpy and pandas imported, the heap frozen) forks a
child that exits at once: the floor under every run's fork and teardown, without namespaces."""


def floors(url: str, count: int) -> tuple[float, float]:
    """Medians (ms) of a bare fork + exit + wait of a process like the zygote (outside any jail),
    and of a request the service answers without a jail (a script that is not a string: 400)."""
    done = subprocess.run([paths().python, "-I", "-S", "-c", FORK_FLOOR, str(paths().site_dir), str(count)],
                          capture_output=True, text=True, check=True)
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    took = []
    for _ in range(count):
        start = time.perf_counter()
        status, _ = post(conn, "/execute", {"script": 1})
        took.append((time.perf_counter() - start) * 1000)
        if status != 400:
            raise RuntimeError(f"expected 400 for a script that is not a string, got {status}")
    conn.close()
    return float(done.stdout), statistics.median(took)


def cpu_by_kind(port: str) -> dict[str, float]:
    """CPU seconds so far of the service on `port`: its own processes (gunicorn), the warm jails'
    zygotes, and what their children (the runs) used, as the zygotes reaped them."""
    parents = _parents()
    service = {pid for pid in parents if _has_env(pid, f"PORT={port}".encode())}
    spent = {"service": 0.0, "zygotes": 0.0, "runs": 0.0}
    for pid in parents:
        if not _descends(pid, service, parents):
            continue
        is_zygote = _is_warm_nsjail(parents[pid])
        if pid not in service and not is_zygote:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own, reaped = (int(fields[11]) + int(fields[12])) / TICKS, (int(fields[13]) + int(fields[14])) / TICKS
        if pid in service:
            spent["service"] += own
        else:
            spent["zygotes"] += own
            spent["runs"] += reaped
    return spent


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def warm_memory_mb(port: str) -> tuple[float, float, int]:
    """RSS and PSS (MB) of the warm jails of the service on `port` (nsjail and all under it),
    and their count."""
    parents = _parents()
    service = {pid for pid in parents if _has_env(pid, f"PORT={port}".encode())}
    roots = {pid for pid in parents if _is_warm_nsjail(pid) and _descends(pid, service, parents)}
    rss = pss = 0
    for pid in parents:
        if not _descends(pid, roots, parents):
            continue
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024, len(roots)


def _descends(pid: int, ancestors: set[int], parents: dict[int, int]) -> bool:
    while pid and pid not in ancestors:
        pid = parents.get(pid, 0)
    return bool(pid)


def _has_env(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _is_warm_nsjail(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"nsjail") and any(b"def serve()" in arg for arg in argv)


BURST_BUDGET = {"PYSANDBOX_REDIS_MEMORY_MB": "2048", "PYSANDBOX_STORAGE_BUDGET_PER_CLIENT_MB": "1536",
                "PYSANDBOX_MAX_QUEUED_JOBS_PER_CLIENT": "100"}
"""A storage budget and a client's share of the queue that hold the async burst in flight at once
(each job reserves ~24 MiB, the worst case of the default caps; by default one client may hold 5
and have 25 waiting): the figures measure the workers, as before fair sharing existed."""


def async_rate(url: str, script: str, jobs: int) -> float:
    """Jobs per second: submit `jobs` with ?async=1, poll until every one has ended."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    start = time.monotonic()
    pending = {post(conn, "/execute?async=1", {"script": script})[1]["id"] for _ in range(jobs)}
    while pending:
        if time.monotonic() - start > 300:
            raise RuntimeError(f"{len(pending)} async jobs still pending after 300 s")
        for job_id in list(pending):
            conn.request("GET", f"/jobs/{job_id}")
            body = json.loads(conn.getresponse().read())
            if body["status"] == "failed":
                raise RuntimeError(f"async job failed: {body}")
            if body["status"] == "finished":
                pending.discard(job_id)
        time.sleep(0.002)
    return jobs / (time.monotonic() - start)


def compare(urls: list[str], seconds: float, rounds: int) -> None:
    """A/B: each round drives every cell on each service in turn (the order alternating from
    round to round, so that neither always runs first); prints the medians over the rounds."""
    cells = [(name, concurrency) for name in ("trivial", "pandas") for concurrency in (1, 4)]
    p50: dict[tuple[str, str, int], list[float]] = {}
    rate: dict[tuple[str, str, int], list[float]] = {}
    for url in urls:
        for name, _ in cells[::2]:
            drive(url, SCRIPTS[name], 1, 1.0, 5)  # warm-up
    for number in range(rounds):
        for url in urls if number % 2 == 0 else urls[::-1]:
            for name, concurrency in cells:
                cell = drive(url, SCRIPTS[name], concurrency, seconds, 100_000)
                p50.setdefault((url, name, concurrency), []).append(cell.percentile(.5))
                rate.setdefault((url, name, concurrency), []).append(cell.rate)
    first, *others = urls
    print(f"\nmedians of {rounds} rounds\n{'script':8} {'conc':>4} {'service':36} {'p50 ms':>8} {'req/s':>8}")
    for name, concurrency in cells:
        for url in urls:
            key = (url, name, concurrency)
            print(f"{name:8} {concurrency:4d} {url:36} {statistics.median(p50[key]):8.2f} "
                  f"{statistics.median(rate[key]):8.1f}")
        for url in others:
            a, b = (first, name, concurrency), (url, name, concurrency)
            print(f"{'':13} {url} / {first}: p50 x{statistics.median(p50[b]) / statistics.median(p50[a]):.3f}"
                  f"  req/s x{statistics.median(rate[b]) / statistics.median(rate[a]):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few requests each: it works, not how fast")
    parser.add_argument("--seconds", type=float, default=6.0, help="time per measured cell")
    parser.add_argument("--compare", nargs="+", metavar="URL", help="A/B the fast path of running services")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.seconds, args.rounds)
        return
    seconds, at_most, jobs = (1.0, 3, 3) if args.smoke else (args.seconds, 100_000, 40)

    cells: dict[tuple[str, str, int], Cell] = {}
    cpu: dict[tuple[str, int], dict[str, float]] = {}
    probes: dict[str, dict[str, float]] = {}
    memory, floor = (0.0, 0.0, 0), (0.0, 0.0)
    for mode, env in MODES.items():
        with gunicorn(env) as url:
            port = url.rsplit(":", 1)[1]
            if mode == "fast":
                time.sleep(2)  # let every warm jail finish importing
                memory = warm_memory_mb(port)
                floor = floors(url, 20 if args.smoke else 200)
            for name, script in SCRIPTS.items():
                drive(url, script, 1, 1.0, 3)  # warm-up
                if mode == "fast":
                    probes[name] = where_time_goes(url, script, 5 if args.smoke else 100)
                for concurrency in (1, 4):
                    before = cpu_by_kind(port)
                    cells[mode, name, concurrency] = cell = drive(url, script, concurrency, seconds, at_most)
                    if mode == "fast":
                        after, count = cpu_by_kind(port), max(1, len(cell.latencies_ms))
                        cpu[name, concurrency] = {kind: (after[kind] - before[kind]) * 1000 / count
                                                  for kind in after}

    print(f"\n{'mode':6} {'script':8} {'conc':>4} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'req/s':>8} {'errors':>6}")
    for (mode, name, concurrency), cell in cells.items():
        print(f"{mode:6} {name:8} {concurrency:4d} {cell.percentile(.5):8.1f} {cell.percentile(.9):8.1f} "
              f"{cell.percentile(.99):8.1f} {cell.rate:8.1f} {cell.errors:6d}")
    print("\nfast/naive: p50 latency (lower is better) and req/s (higher is better)")
    for name in SCRIPTS:
        for concurrency in (1, 4):
            fast, naive = cells["fast", name, concurrency], cells["naive", name, concurrency]
            print(f"  {name:8} conc {concurrency}: latency x{fast.percentile(.5) / naive.percentile(.5):.3f}"
                  f"  throughput x{fast.rate / naive.rate if naive.rate else float('nan'):.1f}")
    print("\nwarm jails, where a run's work goes (medians of one-at-a-time runs; faults are minor"
          " page faults of the run's process, mostly copy-on-write of the zygote's pages)")
    print(f"{'script':8} {'faults before main':>18} {'ms before main':>15} {'faults in main':>15} "
          f"{'ms in main':>11} {'ms whole life':>14}")
    for name, probe in probes.items():
        print(f"{name:8} {probe['faults before main']:18.0f} {probe['ms before main']:15.2f} "
              f"{probe['faults in main']:15.0f} {probe['ms in main']:11.2f} {probe['ms whole life']:14.1f}")
    print("\nwarm jails, CPU ms per request (kernel ticks summed over the cell): the service's process, "
          "the zygotes (forking), the runs' processes")
    print(f"{'script':8} {'conc':>4} {'service':>8} {'zygotes':>8} {'runs':>8} {'total':>8}")
    for (name, concurrency), spent in cpu.items():
        print(f"{name:8} {concurrency:4d} " + " ".join(f"{spent[kind]:8.2f}" for kind in spent)
              + f" {sum(spent.values()):8.2f}")
    print(f"\nfloors: a bare fork + exit of a process holding numpy and pandas {floor[0]:.2f} ms; "
          f"a request answered without a jail (400) {floor[1]:.2f} ms (medians)")
    print(f"\nidle warm jails: {memory[2]}, RSS {memory[0]:.0f} MB, PSS {memory[1]:.0f} MB in all"
          " (PSS counts pages shared between processes once)")

    print(f"\n{'async (RQ, warm workers)':28} {'workers':>7} {'jobs':>5} {'jobs/s':>8}")
    with tempfile.TemporaryDirectory() as directory, redis_server(Path(directory)) as redis_url, \
            gunicorn({"REDIS_URL": redis_url, **BURST_BUDGET}) as url:
        for count in (1, 2):
            with workers(redis_url, count):
                for name in ("trivial", "pandas"):
                    async_rate(url, SCRIPTS[name], 2)  # warm-up
                    rate = async_rate(url, SCRIPTS[name], jobs)
                    print(f"{name:28} {count:7d} {jobs:5d} {rate:8.1f}")
                if count == 2:
                    print()
                    for name in ("trivial", "pandas"):
                        one_by_one = [1000 / async_rate(url, SCRIPTS[name], 1) for _ in range(10)]
                        sync = drive(url, SCRIPTS[name], 1, seconds, at_most).percentile(.5)
                        print(f"{name}: p50 submit-to-finished, one job at a time, "
                              f"{statistics.median(one_by_one):.1f} ms; sync p50 {sync:.1f} ms")

if __name__ == "__main__":
    main()
