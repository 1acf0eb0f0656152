"""Runs inside the jail (as `python -c`): reads the user's script on stdin, calls its main(),
reports on its own fd.

jail/nsjail.py appends the entry call: main(<report fd>) for a one-off jail, or the
zygote's loop (jail/zygote.py) for a warm one.

Standard library only. The report is one JSON object written to the result channel
(the fd named in argv[1]) after main() returns; the service parses it defensively, since the user's code
shares this process and could write anything there. Prints go to fd 1/2 untouched.
"""
from __future__ import annotations  # annotations stay text: the jail never imports typing for them

import json
import linecache
import os
import sys
import traceback
import types

TYPE_CHECKING = False
if TYPE_CHECKING:  # checkers only: importing typing would cost every one-off run ~4 ms
    from typing import NoReturn

REPORT_FD = -1
"""Set by main(): the inherited pipe the report goes to."""
RELEASE_FD = -1
"""Set by main() in a warm jail's child: a socket whose close by the host lets the reported
run end (the host reads the run's CPU time from /proc meanwhile)."""
RELEASE_WAIT_S = 1.0
HARNESS_PID = -1
"""Set by main(): only this process reports; a fork of it that the script made never does."""
SCRIPT_NAME = "<script>"
TRACEBACK_FRAMES = 100
"""The outermost frames shown: walking a million-deep recursion would outlast the run."""
JAIL_SITE = "/opt/site"


def send(text: str) -> NoReturn:
    """Write the one report on the result channel and end the run at once.

    os._exit skips atexit hooks and the wait for the user's non-daemon threads. A process
    the script forked that reaches here (its copy of main() raised) just ends.
    """
    if os.getpid() != HARNESS_PID:
        os._exit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    view = memoryview(text.encode())
    while view:
        view = view[os.write(REPORT_FD, view):]
    for fd in (1, 2, REPORT_FD):  # EOF now, not after the kernel tears down this process
        try:
            os.close(fd)
        except OSError:
            pass
    if RELEASE_FD >= 0:
        import select
        try:
            select.select([RELEASE_FD], [], [], RELEASE_WAIT_S)
        except (OSError, ValueError):
            pass
    os._exit(0)


def report(message: dict) -> NoReturn:
    """Send a report made of plain values."""
    send(json.dumps(message))


def user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame of the user's script on (no harness frames)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != SCRIPT_NAME:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb, limit=TRACEBACK_FRAMES))


def fail(code: str, message: str, exc: BaseException | None = None) -> NoReturn:
    """Report one of the script's own faults."""
    body = {"status": code, "message": message}
    if exc is not None:
        body["traceback"] = user_traceback(exc)
    report(body)


def describe(exc: BaseException) -> str:
    """A one-line 'Type: message' for an exception."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def handle_exit(exc: SystemExit) -> NoReturn:
    """sys.exit() before main() returned: there is no result."""
    fail("no_result", f"the script called sys.exit({exc.code!r}) before main() returned")


def handle_error(exc: BaseException, where: str) -> NoReturn:
    """An exception escaped the user's code."""
    if isinstance(exc, MemoryError):
        fail("memory_limit", "the script ran out of memory", exc)
    fail("main_error", f"{where} raised {describe(exc)}", exc)


def load(source: bytes) -> types.ModuleType:
    """Compile and execute the script as module 'script'."""
    try:
        text = source.decode("utf-8")
        code = compile(text, SCRIPT_NAME, "exec", dont_inherit=True)
    except UnicodeDecodeError as exc:
        fail("syntax_error", f"the script is not valid UTF-8: {exc}")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f"line {line}: " if line else ""
        fail("syntax_error", f"{where}{type(exc).__name__}: {getattr(exc, 'msg', exc)}",
             exc if isinstance(exc, SyntaxError) else None)
    linecache.cache[SCRIPT_NAME] = (len(text), None, text.splitlines(True), SCRIPT_NAME)
    module = types.ModuleType("script")
    module.__file__ = SCRIPT_NAME
    sys.modules["script"] = module
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:
        handle_exit(exc)
    except BaseException as exc:  # the user's code may raise anything
        handle_error(exc, "the script")
    return module


def encode(result: object) -> str:
    """The result as JSON text, or a report of why it cannot be."""
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        fail("invalid_result", f"main() returned a value that is not JSON: {exc}")
    except RecursionError:
        fail("invalid_result", "main() returned a value nested too deeply to encode as JSON")
    except BaseException as exc:  # a hostile __iter__/__str__ of the user's own objects
        fail("invalid_result", f"main() returned a value that could not be encoded: {describe(exc)}")
    raise AssertionError("unreachable")


def main(report_fd: int, release_fd: int = -1) -> None:
    """Read, load, call main(), report on report_fd (then wait for release_fd, if any)."""
    global REPORT_FD, RELEASE_FD, HARNESS_PID
    REPORT_FD, RELEASE_FD, HARNESS_PID = report_fd, release_fd, os.getpid()
    os.set_inheritable(REPORT_FD, False)
    source = sys.stdin.buffer.read()
    sys.stdin = open(os.devnull)
    if JAIL_SITE not in sys.path:
        sys.path.append(JAIL_SITE)
    module = load(source)
    entry = module.__dict__.get("main")
    if not callable(entry):
        fail("no_main", "the script defines no callable main()")
    try:
        result = entry()
    except SystemExit as exc:
        handle_exit(exc)
    except BaseException as exc:  # the user's code may raise anything
        handle_error(exc, "main()")
    send('{"status": "ok", "result": ' + encode(result) + "}")
