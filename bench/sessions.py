"""Sessions: creating one (the spare taken, and a fresh jail), a trivial call against a trivial
warm POST /execute, and a pandas call on a DataFrame the session holds against the same call
in-process plus an HTTP round trip.

    .venv/bin/python bench/sessions.py            # starts gunicorn on loopback; about 20 s
    .venv/bin/python bench/sessions.py URL        # a running service instead

Prints the p50 of each, in ms, from interleaved rounds, and the issue's ratios
(docs/sessions.md reports them). Run as root, after
`make venv jail-site` (the tests' prerequisites).
"""
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jail.paths import paths  # noqa: E402
from tests.support.servers import gunicorn  # noqa: E402

ROUNDS = 60
BLOCK = 5
FRAME = "pd.DataFrame({'k': np.arange(100_000) % 7, 'v': np.arange(100_000)})"
GROUPBY = "frame.groupby('k')['v'].sum().to_dict()"


def p50_ms(action: Callable[[], object], rounds: int = ROUNDS) -> float:
    """The median wall time of `action`, in ms."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def in_process_groupby() -> Callable[[], object]:
    """The groupby in this process, with the jail's pandas."""
    sys.path.append(str(paths().site_dir))
    import numpy as np  # noqa: F401 - FRAME names it
    import pandas as pd  # noqa: F401

    frame = eval(FRAME)  # noqa: S307 - our own constant
    return lambda: eval(GROUPBY, {"frame": frame})  # noqa: S307


def measure(url: str) -> dict[str, float]:
    http = requests.Session()

    def created(body: dict) -> str:
        answer = http.post(f"{url}/sessions", json=body, timeout=30)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def spare_ready() -> None:
        while http.get(f"{url}/health", timeout=10).json()["sessions"].get("spare") != 1:
            time.sleep(0.05)

    def create_ms(body: dict) -> float:
        start = time.perf_counter()
        session = created(body)
        took = (time.perf_counter() - start) * 1000
        http.delete(f"{url}/sessions/{session}", timeout=30)
        return took

    spare, fresh = [], []
    for _ in range(15):
        spare_ready()
        spare.append(create_ms({}))
        fresh.append(create_ms({"memory_mb": 300}))
    session = created({})
    run = f"{url}/sessions/{session}/execute"
    http.post(run, json={"script": f"import numpy as np, pandas as pd\nframe = {FRAME}"}, timeout=30)
    actions: dict[str, Callable[[], object]] = {
        "trivial call in a session": lambda: http.post(run, json={"script": "1"}, timeout=30),
        "groupby in the session": lambda: http.post(run, json={"script": GROUPBY}, timeout=30),
        "HTTP round trip (GET /sessions/<id>)": lambda: http.get(f"{url}/sessions/{session}", timeout=30),
        "HTTP round trip (POST answered 400)": lambda: http.post(run, json={"scrip": GROUPBY}, timeout=30),
        "groupby in-process": in_process_groupby(),
    }
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(ROUNDS // BLOCK):  # interleaved, so that the machine's drifts touch every
        for name, action in actions.items():  # figure alike, in blocks of BLOCK
            for _ in range(BLOCK):
                start = time.perf_counter()
                action()
                times[name].append((time.perf_counter() - start) * 1000)
    results = {"POST /sessions taking the spare": round(statistics.median(spare), 1),
               "POST /sessions with a fresh jail": round(statistics.median(fresh), 1)}
    results |= {name: round(statistics.median(taken), 1) for name, taken in times.items()}
    # Apart: a warm run's sealed child is refilled after it in the background, which would
    # take CPU from the session calls measured next on a 2-core machine.
    results["trivial warm POST /execute"] = p50_ms(lambda: http.post(
        f"{url}/execute", json={"script": "def main(): return 1"}, timeout=30))
    http.delete(f"{url}/sessions/{session}", timeout=30)
    return results


def ratios(ms: dict[str, float]) -> dict[str, float]:
    """The issue's ratios: a trivial call against a warm run, and the groupby in the session
    against in-process plus a round trip (a GET, and a POST answered without running)."""
    groupby, alone = ms["groupby in the session"], ms["groupby in-process"]
    return {
        "trivial call / warm /execute": ms["trivial call in a session"] / ms["trivial warm POST /execute"],
        "groupby / (in-process + GET)": groupby / (alone + ms["HTTP round trip (GET /sessions/<id>)"]),
        "groupby / (in-process + POST 400)": groupby / (alone + ms["HTTP round trip (POST answered 400)"]),
    }


def main() -> None:
    given = sys.argv[1] if len(sys.argv) > 1 else None
    with nullcontext(given) if given else gunicorn({"REDIS_URL": ""}) as url:
        ms = measure(url)
        for name, value in ms.items():
            print(f"{name:45} {value:8.1f} ms")
        for name, ratio in ratios(ms).items():
            print(f"{name:45} {ratio:8.2f} x")


if __name__ == "__main__":
    main()
