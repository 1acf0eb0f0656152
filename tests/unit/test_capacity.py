"""Fair run slots (api/capacity.py) with real threads: caps per client, turns between clients,
bounded waits. The flood through the real service is tests/image/test_fairness.py."""
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack

import pytest

from api.capacity import Capacity
from api.errors import ApiError


class Holder:
    """A request in a thread: takes a slot for `client`, records when it got it, holds it until released."""

    def __init__(self, capacity: Capacity, client: str, granted: list[str]) -> None:
        self.release, self.outcome = threading.Event(), "waiting"
        self.thread = threading.Thread(target=self._run, args=(capacity, client, granted))
        self.thread.start()

    def _run(self, capacity: Capacity, client: str, granted: list[str]) -> None:
        try:
            with capacity.slot(client):
                granted.append(client)
                self.outcome = "granted"
                self.release.wait(10)
        except ApiError as error:
            self.outcome = error.code

    def done(self) -> str:
        self.release.set()
        self.thread.join(10)
        return self.outcome


def settle() -> None:
    """Give threads time to reach their wait: for what must *not* happen (a loaded machine only
    makes such a check weaker, never false)."""
    time.sleep(0.1)


def until(condition: Callable[[], bool]) -> None:
    """Wait for what must happen, however loaded the machine (threads woken by a release append
    in the order the scheduler runs them, so each grant is awaited before the next release)."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "not granted within 10 s"
        time.sleep(0.005)


def test_a_client_alone_may_hold_every_slot():
    capacity = Capacity(4, 0, 1)
    with ExitStack() as stack:
        for _ in range(4):
            stack.enter_context(capacity.slot("a"))
        with pytest.raises(ApiError) as refused:
            stack.enter_context(capacity.slot("a"))
    assert refused.value.code == "busy" and refused.value.headers["Retry-After"] == "1"


def test_another_client_present_gets_the_next_slot_and_a_free_one_from_then_on():
    capacity, granted = Capacity(4, 1.0, 1), list[str]()
    a = [Holder(capacity, "a", granted) for _ in range(4)]
    until(lambda: len(granted) == 4)
    a_waiting = Holder(capacity, "a", granted)
    settle()
    b = Holder(capacity, "b", granted)
    settle()
    assert granted == ["a"] * 4 and b.outcome == "waiting"
    a[0].done()
    until(lambda: len(granted) == 5)
    assert granted[-1] == "b"  # before a's older request: a is at its cap (3) while b is about
    assert b.done() == "granted"
    assert a_waiting.done() == "busy"  # a slot is free, but kept for b
    assert Holder(capacity, "b", granted).done() == "granted"
    for holder in a[1:]:
        holder.done()


def test_waiting_clients_are_served_in_turn_not_first_come():
    capacity, granted = Capacity(8, 2.0, 1), list[str]()
    held = [Holder(capacity, "x", granted) for _ in range(8)]  # x alone: every slot
    until(lambda: len(granted) == 8)
    waiting = [Holder(capacity, "a", granted) for _ in range(3)]
    settle()
    waiting.append(Holder(capacity, "c", granted))
    settle()
    held[0].done()
    until(lambda: len(granted) == 9)
    held[1].done()
    until(lambda: len(granted) == 10)
    assert granted[8:] == ["a", "c"], granted  # first come would be a, a
    for holder in held[2:] + waiting:
        holder.done()


def test_a_light_client_needing_two_slots_gets_the_next_one_freed():
    capacity, granted = Capacity(4, 2.0, 1), list[str]()
    heavy = [Holder(capacity, "a", granted) for _ in range(4)]
    until(lambda: len(granted) == 4)
    light = [Holder(capacity, "b", granted), Holder(capacity, "b", granted)]
    settle()
    heavy_waiting = Holder(capacity, "a", granted)
    settle()
    heavy[0].done()
    heavy[1].done()
    until(lambda: len(granted) == 6)
    assert granted[4:] == ["b", "b"], granted  # a is down to 2: half, while b needs two
    for holder in heavy[2:] + light:
        holder.done()
    until(lambda: len(granted) == 7)
    assert granted[-1] == "a" and heavy_waiting.done() == "granted"


def test_a_client_waits_with_few_requests_and_the_rest_are_refused_at_once():
    capacity, granted = Capacity(2, 2.0, 1), list[str]()
    held = [Holder(capacity, "a", granted) for _ in range(2)]
    waiting = [Holder(capacity, "a", granted) for _ in range(2)]
    until(lambda: len(granted) == 2 and len(capacity._waiting.get("a", ())) == 2)
    started = time.monotonic()
    with pytest.raises(ApiError):
        with capacity.slot("a"):
            pass
    assert time.monotonic() - started < 1.0  # at once, not after the 2 s wait
    for holder in held + waiting:
        holder.done()


def test_with_fair_sharing_off_one_client_holds_every_slot():
    capacity, granted = Capacity(2, 0.3, 1, fair=False), list[str]()
    held = [Holder(capacity, "a", granted) for _ in range(2)]
    until(lambda: len(granted) == 2)
    assert Holder(capacity, "b", granted).done() == "busy"
    for holder in held:
        holder.done()


def test_a_client_whose_runs_overlapped_lately_keeps_room_for_as_many():
    capacity = Capacity(4, 0, 1)
    with capacity.slot("b"), capacity.slot("b"):
        pass  # b needed two slots at once
    with ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(capacity.slot("a"))
        with pytest.raises(ApiError):
            stack.enter_context(capacity.slot("a"))


def test_a_newcomer_finding_every_slot_held_runs_at_once_in_the_slot_beyond():
    """Issue 16: a flood held every slot, and a client's first request waited for one of the
    flood's runs to end (or got 503 busy). A client holding none now takes the one slot beyond
    `slots`; a client alone still holds every slot; one beyond is all there is."""
    capacity, granted = Capacity(4, 0.3, 1, reserved=1), list[str]()
    a = [Holder(capacity, "a", granted) for _ in range(5)]
    until(lambda: len(granted) == 4)
    settle()
    assert granted == ["a"] * 4 and a[4].outcome == "waiting"  # a alone: every slot, none beyond
    b = Holder(capacity, "b", granted)
    until(lambda: len(granted) == 5)
    assert granted == ["a"] * 4 + ["b"] and b.outcome == "granted"
    c = Holder(capacity, "c", granted)
    settle()
    assert c.outcome == "waiting"  # the one beyond is b's
    b.done()
    until(lambda: len(granted) == 6)
    assert c.outcome == "granted"  # c holds none either: the slot beyond passes to it
    assert a[4].done() == "busy"  # a holds slots: it waits for its own turn (and its wait ended)
    for holder in (*a[:4], c):
        assert holder.done() == "granted"
    with ExitStack() as stack:  # all back: four slots and the one beyond are free again
        for client in "abcd":
            stack.enter_context(capacity.slot(client))
        stack.enter_context(capacity.slot("e"))


def test_without_fair_sharing_there_is_no_slot_beyond():
    capacity = Capacity(4, 0, 1, fair=False, reserved=1)
    with ExitStack() as stack:
        for client in "abcd":
            stack.enter_context(capacity.slot(client))
        with pytest.raises(ApiError):
            stack.enter_context(capacity.slot("e"))
