"""Sessions in the jail (jail/session.py), against the real nsjail: state kept from call to call,
isolation between sessions, interrupts that keep the state, and the ways a session ends."""
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from typing import cast

import pytest

from jail import Limits, RunInput, Sandbox, Status
from jail.cgroups import parents
from jail.nsjail import host_cgroups
from jail.session import Session, SessionBusy, SessionEnded
from tests.conftest import NO_CGROUPS
from tests.jail.test_adversarial import FS_READS, FS_WRITES, NETWORK, PRIVILEGE, assert_all_blocked, probe

SESSION = Limits(memory_mb=192)
CALL = Limits(timeout_s=15.0)
"""A call's limit: its first import of pandas in a fresh interpreter may take seconds on a loaded host."""
IGNORES_INTERRUPTS = """
    import time
    while True:
        try:
            while True:
                time.sleep(0.01)
        except KeyboardInterrupt:
            pass
"""


@pytest.fixture(params=["cgroups", "rlimits"])
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    """A session with this host's cgroups, and one with none (rlimits and the watchdog)."""
    opened = Session(SESSION, lifetime_s=60, host=NO_CGROUPS if request.param == "rlimits" else None)
    yield opened
    opened.close("deleted")


def call(session: Session, source: str, limits: Limits = CALL, inputs: RunInput | None = None):
    """One call of an indented script; its outcome."""
    return session.execute(textwrap.dedent(source), limits, inputs)


def ok(session: Session, source: str, inputs: RunInput | None = None):
    outcome = call(session, source, inputs=inputs)
    assert outcome.status is Status.OK, outcome
    return outcome


def test_a_variable_an_import_a_dataframe_and_a_file_last_from_call_to_call(session):
    ok(session, """
        import pandas as pd
        x = 41
        frame = pd.DataFrame({"a": [1, 2, 3]})
        open("kept.txt", "w").write("still here")
    """)
    assert ok(session, "x + 1").result == 42
    assert ok(session, "int(frame.a.sum()) + len(pd.__name__)").result == 6 + 6
    assert ok(session, "open('kept.txt').read()").result == "still here"


def test_the_result_is_main_if_the_call_defines_it_else_the_last_expression_else_null(session):
    assert ok(session, "def main():\n    return 'from main'\n1 + 1").result == "from main"
    assert ok(session, "1 + 1").result == 2, "main() from an earlier call is not called again"
    assert ok(session, "y = 3").result is None
    assert ok(session, "def main(given):\n    return given['n'] * 2",
              RunInput(input_json='{"n": 21}')).result == 42
    assert ok(session, "object()").result.startswith("<object object at"), "not JSON: its repr()"


def test_each_call_has_its_own_output_stdin_and_files(session):
    first = ok(session, "import sys\nprint('one')\nprint('err', file=sys.stderr)\n"
                        "open('out/a.txt', 'w').write('A')\nsys.stdin.read()",
               RunInput(stdin=b"typed"))
    assert (first.stdout, first.stderr, first.result) == ("one\n", "err\n", "typed")
    assert [f.name for f in first.files] == ["a.txt"]
    second = ok(session, "print('two')\nopen('data.csv').read()",
                RunInput(files=(("data.csv", b"a,b\n"),)))
    assert (second.stdout, second.stderr, second.result, second.files) == ("two\n", "", "a,b\n", ())
    assert ok(session, "open('data.csv').read()", RunInput(files=(("data.csv", b"new\n"),))).result == "new\n"


def test_an_error_is_the_calls_and_the_session_goes_on(session):
    ok(session, "x = 1")
    assert call(session, "1 / 0").status is Status.MAIN_ERROR
    assert call(session, "def broken(:").status is Status.SYNTAX_ERROR
    assert call(session, "import sys; sys.exit(2)").status is Status.NO_RESULT
    assert ok(session, "x").result == 1 and session.ended is None


def test_a_calls_freed_temporaries_are_kept_for_the_next_call(session):
    """The interpreter's malloc keeps freed heap between calls (jail/session.py's malloc_tunables):
    a groupby run again on a held frame faults in no fresh pages (~200 a call when glibc hands
    them back)."""
    ok(session, """
        import resource
        import numpy as np
        import pandas as pd
        frame = pd.DataFrame({"k": np.arange(100_000) % 7, "v": np.arange(100_000)})
        def faults():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            frame.groupby("k")["v"].sum()
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        faults()
    """)
    faults = [ok(session, "faults()").result for _ in range(3)]
    assert min(faults) < 50, f"page faults of each groupby after the first: {faults}"


def test_two_sessions_never_see_each_other():
    first, second = Session(SESSION, 60), Session(SESSION, 60)
    try:
        ok(first, "secret = 'first'\nopen('/tmp/secret', 'w').write('first')")
        assert call(second, "secret").status is Status.MAIN_ERROR
        assert ok(second, "import os; os.path.exists('/tmp/secret')").result is False
    finally:
        first.close("deleted")
        second.close("deleted")


def test_a_call_past_its_time_is_interrupted_and_the_state_is_kept(session):
    ok(session, "x = 'kept'")
    outcome = call(session, """
        import time
        try:
            while True:
                time.sleep(0.01)
        except KeyboardInterrupt:
            print("interrupted")
            raise
    """, Limits(timeout_s=0.5))
    assert outcome.status is Status.TIMEOUT and outcome.stdout == "interrupted\n", outcome
    assert session.ended is None
    assert ok(session, "x").result == "kept"


def test_a_call_that_ignores_the_interrupt_ends_the_session(session):
    outcome = call(session, IGNORES_INTERRUPTS, Limits(timeout_s=0.5))
    assert outcome.status is Status.TIMEOUT
    assert session.ended == "timeout"
    with pytest.raises(SessionEnded, match="timeout"):
        call(session, "1")


@pytest.mark.parametrize("hog", [
    "held = bytearray(400 * 1024 * 1024)",
    "held = []\nfor _ in range(400):\n    held.append(b'x' * 1024 * 1024)",
], ids=["one-block", "step-by-step"])
def test_memory_past_the_limit_ends_the_session(session, hog):
    ok(session, "x = 1")
    assert call(session, hog).status is Status.MEMORY_LIMIT
    assert session.ended == "memory_limit"
    with pytest.raises(SessionEnded, match="memory_limit"):
        call(session, "x")


def test_an_interpreter_that_exits_ends_the_session(session):
    assert call(session, "import os; os._exit(3)").status is Status.NO_RESULT
    assert session.ended == "exited"


def test_calls_run_one_at_a_time(session):
    started = threading.Thread(target=call, args=(session, "import time; time.sleep(4)"))
    started.start()
    try:
        for _ in range(400):
            if session.busy:
                break
            threading.Event().wait(0.01)
        with pytest.raises(SessionBusy):
            call(session, "1")
    finally:
        started.join()


def test_a_calls_processes_end_with_it(session):
    started = ok(session, "import subprocess\nchild = subprocess.Popen(['sleep', '300'])\nchild.pid")
    assert started.duration_ms < 1500, "the child does not hold the call's output open"
    assert ok(session, "import os\nos.path.exists(f'/proc/{child.pid}')").result is False


def test_close_kills_the_jail_and_removes_the_cgroup():
    opened = Session(SESSION, 60)
    ok(opened, "x = 1")
    jail = opened.proc.pid
    answers: list[object] = []

    def sleep_forever() -> None:
        try:
            answers.append(call(opened, "import time\nwhile True:\n    time.sleep(1)", Limits(timeout_s=30)))
        except SessionEnded as exc:  # closed before its pipes were handed over
            answers.append(exc)

    busy = threading.Thread(target=sleep_forever)
    busy.start()
    while not opened.busy:
        threading.Event().wait(0.01)
    opened.close("deleted")  # while a call runs: the call comes back at once
    busy.join(timeout=5)
    assert not busy.is_alive() and len(answers) == 1, "the call came back"
    with pytest.raises(SessionEnded, match="deleted"):
        call(opened, "1")
    assert opened.proc.returncode is not None
    assert subprocess.run(["pgrep", "-P", str(jail)], capture_output=True).stdout == b""
    assert not any((parent / opened.cgroup.name).exists() for parent in parents(host_cgroups()))


class InSession:
    """A Sandbox's run() that runs each script as a call of one session (the probes define main())."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def run(self, script: str, limits: Limits, cancel: object = None, *,
            inputs: RunInput | None = None):
        return self.session.execute(script, limits, inputs)


@pytest.fixture(scope="module")
def probed() -> Iterator[Sandbox]:
    """One session that every escape probe runs in, one call after another."""
    opened = Session(SESSION, lifetime_s=600)
    yield cast(Sandbox, InSession(opened))
    opened.close("deleted")


@pytest.mark.parametrize("attacks", FS_READS + FS_WRITES + NETWORK + PRIVILEGE)
def test_the_escape_probes_fail_inside_a_session_call(probed, attacks):
    assert_all_blocked(probe(probed, "", attacks))
