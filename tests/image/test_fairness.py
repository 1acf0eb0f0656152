"""Fair sharing under a flood, on the image (loopback only, about a minute): client A keeps 20
CPU-bound 2-second scripts in flight, client B sends a trivial script every 200 ms (bench/fairness.py).

With fair sharing B is never refused and never waits for a run slot, from its first request
(made after A has flooded alone for two of its runs) on, while A keeps at least half of the run
capacity; with it off (the same image, PYSANDBOX_FAIR_SHARING=false) B is
refused or waits. B's wall-clock latency is printed, not asserted: on a 2-core machine shared
with other work it measures the machine as much as the service (bench/fairness.py for figures)."""
import hashlib
import shlex

import pytest

from bench.fairness import HEADER, flood
from tests.image.test_docker import running
from tests.support.images import make_var

pytestmark = pytest.mark.docker
SLOTS = 4
SECONDS = 15.0
KEY_A, KEY_B = "key-of-client-a-" + "a" * 32, "key-of-client-b-" + "b" * 32
KEYS = ",".join(f"{name}:{hashlib.sha256(key.encode()).hexdigest()}"
                for name, key in (("client-a", KEY_A), ("client-b", KEY_B)))
ENV = (f"PYSANDBOX_API_KEYS={KEYS}", f"PYSANDBOX_MAX_CONCURRENT_RUNS={SLOTS}", "PYSANDBOX_WORKERS=0")
SLOT_WAIT_P99_MS = 250


def test_a_flood_leaves_a_light_client_served_at_once_and_the_flooder_half_the_capacity(image):  # noqa: F811
    flags = shlex.split(make_var("DOCKER_RUN_FLAGS"))
    with running(image, flags, *ENV) as (_, url):
        fair = flood(url, KEY_A, KEY_B, SECONDS, SLOTS)
    with running(image, flags, *ENV, "PYSANDBOX_FAIR_SHARING=false") as (_, url):
        unfair = flood(url, KEY_A, KEY_B, SECONDS, SLOTS)
    print(f"\n{HEADER}\n{fair.row('fair')}\n{unfair.row('off')}")
    assert len(fair.b_latency_ms) >= SECONDS / 0.2 - 1, fair.row("fair")  # B's first request included
    assert fair.b_errors == {}, (fair.b_errors, fair.row("fair"))
    assert fair.a_share >= 0.5, fair.row("fair")
    assert fair.percentile(fair.b_slot_wait_ms, 99) <= SLOT_WAIT_P99_MS, fair.row("fair")
    assert unfair.b_errors or unfair.percentile(unfair.b_slot_wait_ms, 99) > SLOT_WAIT_P99_MS, \
        unfair.row("off")
