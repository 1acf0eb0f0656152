"""Runs inside a session's jail, appended to the harness (jail/harness.py): one interpreter that
takes calls one after another and keeps what they define, like a notebook's kernel.

The host (jail/session.py) sends each call on the control socket (fd argv[1]): one line of JSON
with the call's caps, and four fds: the call's stdin pipe (which carries the run envelope of
jail/runinput.py), its stdout, stderr and report pipes. The call runs in one namespace dict
kept for the session's life, with /tmp (its working directory) kept too. Its report is the one
a run gives (jail/protocol.py parses it): `result` is main()'s value when the call defined
main, else the value of its last expression (JSON, or its repr() when it is not JSON), else
null; then the files it left under /tmp/out, which are removed for the next call. Then "done"
on the control socket.

SIGINT from the host (a call past its time limit) raises KeyboardInterrupt in the call's code
only; between calls it is ignored. A call's processes end with it (a session keeps its
interpreter's state, not processes: none can hold the call's output open or outlive the
session). MemoryError ends the session: its state may be half-built.
"""
import ast
import json
import linecache
import shutil
import signal
import socket

TYPE_CHECKING = False
if TYPE_CHECKING:  # checkers only: at run time this text follows jail/harness.py's in one
    from collections.abc import Callable  # `python -c` program, which defines the rest
    from typing import NoReturn

    from jail.harness import (
        HARNESS_PID,
        JAIL_SITE,
        MAX_FILES_OUT,  # noqa: F401 - set per call (global)
        MAX_FILES_OUT_BYTES,  # noqa: F401
        MPL_CONFIG,
        OUT_DIR,
        REPORT_FD,
        SCRIPT_NAME,
        TMP,
        describe,
        encode,
        fail,
        matplotlib_config,
        os,
        signature_problem,
        sys,
        unpack,
        write_report,
    )

CALL_FDS = 4
IN_CALL = False
"""True while the call's own code runs: only then does SIGINT interrupt it."""
NAMESPACE: dict = {"__name__": "__main__", "__builtins__": __builtins__}
"""What the session's calls define, kept between them."""
CALLS = 0


class Reported(BaseException):
    """Raised once a call's report is written: unwinds the harness back to the loop."""


def send(text: str) -> "NoReturn":  # replaces the harness's send(), which ends the process
    """Write the call's report (with its files) and unwind to the loop."""
    global IN_CALL
    IN_CALL = False
    if os.getpid() != HARNESS_PID:  # a fork the call made, whose copy of main() raised
        os._exit(1)
    write_report(text)
    raise Reported


def on_interrupt(signum: int, frame: object) -> None:
    """SIGINT: a KeyboardInterrupt in the call's code, nothing between calls."""
    if IN_CALL:
        raise KeyboardInterrupt


def compile_call(source: bytes) -> tuple:
    """The call's code: its statements, and its last expression apart (None if it ends in none)."""
    try:
        text = source.decode("utf-8")
        tree = ast.parse(text, SCRIPT_NAME)
    except UnicodeDecodeError as exc:
        fail("syntax_error", f"the script is not valid UTF-8: {exc}")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f"line {line}: " if line else ""
        fail("syntax_error", f"{where}{type(exc).__name__}: {getattr(exc, 'msg', exc)}",
             exc if isinstance(exc, SyntaxError) else None)
    global CALLS
    CALLS += 1
    linecache.cache[SCRIPT_NAME] = (len(text), None, text.splitlines(True), SCRIPT_NAME)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        expression = tree.body.pop()
        assert isinstance(expression, ast.Expr)
        last = compile(ast.Expression(expression.value), SCRIPT_NAME, "eval", dont_inherit=True)
    return compile(tree, SCRIPT_NAME, "exec", dont_inherit=True), last


def guarded(thunk: "Callable[[], object]", where: str) -> object:
    """Run a piece of the call's own code (the only time SIGINT interrupts), reporting what
    escapes it."""
    global IN_CALL
    IN_CALL = True
    try:
        return thunk()
    except SystemExit as exc:
        fail("no_result", f"{where} called sys.exit({exc.code!r}); the session goes on")
    except KeyboardInterrupt as exc:
        fail("timeout", "the call was interrupted (KeyboardInterrupt); the session keeps its state", exc)
    except MemoryError as exc:
        fail("memory_limit", "the script ran out of memory; the session ends", exc)
    except BaseException as exc:  # the user's code may raise anything
        fail("main_error", f"{where} raised {describe(exc)}", exc)
    finally:
        IN_CALL = False


def notebook_value(value: object) -> str:
    """A last expression's value as JSON text: itself when JSON, else its repr() (as a notebook
    shows it)."""
    try:
        return json.dumps(value, allow_nan=False)
    except BaseException:  # noqa: BLE001, S110 - not JSON (or a hostile __iter__): shown instead
        pass
    try:
        return json.dumps(repr(value))
    except BaseException as exc:  # a hostile __repr__
        fail("invalid_result", f"the last expression's value could not be shown: {describe(exc)}")
    raise AssertionError("unreachable")


def run_call(source: bytes, args: tuple) -> "NoReturn":
    """Run one call in the session's namespace and report like a run (never returns)."""
    body, last = compile_call(source)
    before = NAMESPACE.get("main")
    guarded(lambda: exec(body, NAMESPACE), "the script")
    entry = NAMESPACE.get("main")
    if entry is not before and callable(entry):
        problem = signature_problem(entry, len(args))
        if problem is not None:
            fail("main_signature", problem)
        result = guarded(lambda: entry(*args), "main()")
        send('{"status": "ok", "result": ' + encode(result) + "}")
    if args:
        fail("main_signature", "the request has an input but this call defines no main(input)")
    value = None if last is None else guarded(lambda: eval(last, NAMESPACE), "the script")
    send('{"status": "ok", "result": ' + notebook_value(value) + "}")


def take_call(control: socket.socket) -> bool:
    """Wait for the next call and put its pipes in place; False once the host is gone."""
    global REPORT_FD, MAX_FILES_OUT, MAX_FILES_OUT_BYTES
    header, fds, _, _ = socket.recv_fds(control, 4096, CALL_FDS)
    if not header or len(fds) != CALL_FDS:
        return False
    caps = json.loads(header)
    MAX_FILES_OUT, MAX_FILES_OUT_BYTES = caps["FILES_OUT"], caps["FILES_OUT_BYTES"]
    stdin, out, err, REPORT_FD = fds
    for fd, target in ((out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.set_inheritable(REPORT_FD, False)
    with open(stdin, "rb") as pipe:
        data = pipe.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        put_inputs_and_run(data)
    except Reported:
        pass
    return True


def put_inputs_and_run(data: bytes) -> "NoReturn":
    """Put the call's inputs in place (input files replace those of the same name) and run it."""
    if data[:1] == b"\0":
        for name, _ in json.loads(data[1:].partition(b"\n")[0])["files"]:
            try:
                os.unlink(os.path.join(TMP, name))
            except OSError:
                pass
    try:
        source, args, has_stdin = unpack(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail("main_error", f"the call's inputs could not be put in place: {describe(exc)}")
    sys.stdin = open(0, encoding="utf-8", closefd=False) if has_stdin else open(os.devnull)
    run_call(source, args)


def end_call() -> None:
    """End what the call started: its processes (this is pid 1 of the jail: kill(-1) reaches
    every other process in it), its pipes (its output ends here), its files in /tmp/out."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    try:  # every one of them: SIGKILLed, each ends at once; orphans are this process's to reap
        while True:
            os.waitpid(-1, 0)
    except ChildProcessError:
        pass
    null = os.open(os.devnull, os.O_WRONLY)
    for target in (1, 2):  # the call's threads, if any, write there now
        os.dup2(null, target)
    os.close(null)
    try:
        os.close(REPORT_FD)
    except OSError:
        pass
    try:
        if os.path.islink(OUT_DIR) or not os.path.isdir(OUT_DIR):
            os.unlink(OUT_DIR)
        else:
            shutil.rmtree(OUT_DIR)
    except OSError:
        pass
    try:
        os.mkdir(OUT_DIR)
    except OSError:
        pass


def serve_session(control_fd: int) -> None:
    """Say ready, then run calls until the host closes the control socket."""
    global HARNESS_PID
    HARNESS_PID = os.getpid()
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGINT, on_interrupt)
    os.mkdir(OUT_DIR)
    if JAIL_SITE not in sys.path:
        sys.path.append(JAIL_SITE)
    if os.path.isdir(MPL_CONFIG):
        matplotlib_config()
    control.send(b'{"ready": true}')
    while take_call(control):
        end_call()
        control.send(b'{"done": true}')
