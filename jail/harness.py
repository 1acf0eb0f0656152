"""Runs inside the jail (as `python -c`): reads the user's script on stdin (alone, or in the
envelope of jail/runinput.py with main()'s input, stdin and files), calls its main(), reports
on its own fd.

jail/nsjail.py appends the entry call: main(<report fd>, ...) for a one-off jail, or the
zygote's loop (jail/zygote.py) for a warm one.

Standard library only. The report is one JSON object written to the result channel
(the fd named in argv[1]) after main() returns, then, when the script left files under
/tmp/out, a second line of JSON with them; the service parses both defensively, since the
user's code shares this process and could write anything there. Prints go to fd 1/2 untouched.
"""
from __future__ import annotations  # annotations stay text: the jail never imports typing for them

import json
import linecache
import os
import stat
import sys
import traceback
import types

TYPE_CHECKING = False
if TYPE_CHECKING:  # checkers only: importing typing would cost every one-off run ~4 ms
    from collections.abc import Callable
    from typing import NoReturn

REPORT_FD = -1
"""Set by main(): the inherited pipe the report goes to."""
RELEASE_FD = -1
"""Set by main() in a warm jail's child: a socket whose close by the host lets the reported
run end (the host reads the run's CPU time from /proc meanwhile)."""
RELEASE_WAIT_S = 1.0
HARNESS_PID = -1
"""Set by main(): only this process reports; a fork of it that the script made never does."""
MAX_FILES_OUT = 16
MAX_FILES_OUT_BYTES = 8 * 1024 * 1024
"""Set by main(): the caps on what /tmp/out may return (the host checks them again)."""
TMP = "/tmp"
OUT_DIR = "/tmp/out"
MAX_OUT_ENTRIES = 4096
"""Directory entries looked at under /tmp/out: 10 000 tiny files are not walked to the end."""
MAX_OUT_DEPTH = 8
MAX_OUT_NAME_CHARS = 1024
"""The longest name (path under out/) the service returns: jail/runinput.py's MAX_NAME_CHARS
(the jail cannot import it; tests/jail/test_io.py checks they agree). A longer one is skipped."""
SCRIPT_NAME = "<script>"
TRACEBACK_FRAMES = 100
"""The outermost frames shown: walking a million-deep recursion would outlast the run."""
JAIL_SITE = "/opt/site"
MPL_CONFIG = JAIL_SITE + "/.matplotlib"
"""Only in images built with matplotlib: its font cache, made at build time (Dockerfile.api)."""


def write_report(text: str) -> None:
    """Flush the script's streams, then write the report and the files it left on the result
    channel (a session's calls write theirs the same way: jail/session_harness.py)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    try:
        files = collect()
    except BaseException:  # noqa: BLE001 - the script may have broken anything; the result still goes
        files = b""
    view = memoryview(text.encode() + files)
    while view:
        view = view[os.write(REPORT_FD, view):]


def send(text: str) -> NoReturn:
    """Write the one report on the result channel and end the run at once.

    os._exit skips atexit hooks and the wait for the user's non-daemon threads. A process
    the script forked that reaches here (its copy of main() raised) just ends.
    """
    if os.getpid() != HARNESS_PID:
        os._exit(1)
    write_report(text)
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


def collect() -> bytes:
    """The regular files under /tmp/out as the report's second line; b"" when there are none.

    Nothing is followed: each directory is opened by fd with O_NOFOLLOW, each file opened
    O_NOFOLLOW|O_NONBLOCK (a FIFO swapped in cannot block) and read only when fstat says it
    is a regular file, at most the bytes still allowed (a growing or sparse file cannot make
    it read more). Names the service would refuse (control characters, not UTF-8) are skipped."""
    try:
        top = os.open(OUT_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return b""
    found: list = []
    state = {"entries": 0, "bytes": MAX_FILES_OUT_BYTES, "truncated": False}
    try:
        _walk(top, "", 1, found, state)
    finally:
        os.close(top)
    if not found and not state["truncated"]:
        return b""
    import binascii
    files = [{"name": name, "content": binascii.b2a_base64(data, newline=False).decode("ascii")}
             for name, data in sorted(found)]
    return ("\n" + json.dumps({"files": files, "truncated": state["truncated"]})).encode()


def _walk(dir_fd: int, prefix: str, depth: int, found: list, state: dict) -> None:
    """Add the files of one directory (by fd) and of its subdirectories, within the caps."""
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError:
        return
    for name in names:
        state["entries"] += 1
        if state["entries"] > MAX_OUT_ENTRIES:
            state["truncated"] = True
            return
        if not _printable(name):
            continue
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and depth < MAX_OUT_DEPTH:
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                _walk(sub, prefix + name + "/", depth + 1, found, state)
            finally:
                os.close(sub)
        elif stat.S_ISREG(info.st_mode) and len(prefix) + len(name) <= MAX_OUT_NAME_CHARS:
            _take(dir_fd, name, prefix + name, found, state)


def _take(dir_fd: int, name: str, path: str, found: list, state: dict) -> None:
    """Read one regular file if the caps still allow all of it."""
    if len(found) >= MAX_FILES_OUT:
        state["truncated"] = True
        return
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return
        if info.st_size > state["bytes"]:
            state["truncated"] = True
            return
        chunks, left = [], info.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError:
        return
    finally:
        os.close(fd)
    data = b"".join(chunks)
    state["bytes"] -= len(data)
    found.append((path, data))


def _printable(name: str) -> bool:
    """A name the service returns: UTF-8, no control characters, at most 255 bytes."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(raw) <= 255 and not any(ord(c) < 32 or 127 <= ord(c) < 160 or c == "\\" for c in name)


def unpack(data: bytes) -> tuple[bytes, tuple, bool]:
    """The script, main()'s arguments and whether the script has a stdin, from what came on
    stdin; the stdin (an unlinked file on fd 0, which children inherit) and files put in place.

    A bare script (no envelope) is the common case: main() gets no argument, stdin is empty."""
    if data[:1] != b"\0":
        return data, (), False
    line, _, rest = data[1:].partition(b"\n")
    header = json.loads(line)
    view = memoryview(rest)
    source, view = bytes(view[:header["script"]]), view[header["script"]:]
    stdin, view = view[:header["stdin"]], view[header["stdin"]:]
    if len(stdin):
        fd = os.open(TMP, os.O_TMPFILE | os.O_RDWR, 0o600)  # unlinked: only fd 0 reaches it
        _write_all(fd, stdin)
        os.lseek(fd, 0, os.SEEK_SET)
        os.dup2(fd, 0)
        os.close(fd)
    for name, size in header["files"]:
        path = os.path.join(TMP, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            _write_all(fd, view[:size])
        finally:
            os.close(fd)
        view = view[size:]
    return source, ((json.loads(header["input"]),) if "input" in header else ()), len(stdin) > 0


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def signature_problem(entry: Callable[..., object], given: int) -> str | None:
    """Why main cannot be called with `given` positional arguments, or None.

    A plain function is judged from its code object: importing inspect would cost a one-off
    jail ~20 ms per run. Anything else (a class, a partial, a builtin) asks inspect."""
    if type(entry) is types.FunctionType:
        code = entry.__code__
        takes = code.co_argcount
        required = takes - len(entry.__defaults__ or ())
        varargs = bool(code.co_flags & 0x04)
        kw_required = set(code.co_varnames[takes:takes + code.co_kwonlyargcount]) - set(
            entry.__kwdefaults__ or {})
        if required <= given and (given <= takes or varargs) and not kw_required:
            return None
    else:
        import inspect
        try:
            inspect.signature(entry).bind(*range(given))
            return None
        except TypeError:
            pass
        except ValueError:  # no signature to read: let the call say
            return None
    import inspect
    try:
        shown = f"main{inspect.signature(entry)}"
    except (TypeError, ValueError):
        shown = "main"
    if given and shown.endswith("()"):
        return f"{shown} takes no argument but the request has an input; define main(input)"
    if given:
        return f"{shown} cannot take the request's input as its one argument; define main(input)"
    return f"{shown} needs an argument but the request has no input; send \"input\" or define main()"


def matplotlib_config() -> None:
    """Make matplotlib's config dir (MPLCONFIGDIR in nsjail.cfg) in this run's /tmp, linked to
    the font cache made at build time: matplotlib wants the dir writable, and would rebuild
    the cache (a second or more) in every fresh /tmp."""
    target = TMP + "/.matplotlib"
    os.mkdir(target)
    for name in os.listdir(MPL_CONFIG):
        os.symlink(f"{MPL_CONFIG}/{name}", f"{target}/{name}")


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


def main(report_fd: int, release_fd: int = -1, max_files_out: int = MAX_FILES_OUT,
         max_files_out_bytes: int = MAX_FILES_OUT_BYTES) -> None:
    """Read, put the inputs in place, load, call main(), report on report_fd with what it left
    in /tmp/out (then wait for release_fd, if any)."""
    global REPORT_FD, RELEASE_FD, HARNESS_PID, MAX_FILES_OUT, MAX_FILES_OUT_BYTES
    REPORT_FD, RELEASE_FD, HARNESS_PID = report_fd, release_fd, os.getpid()
    MAX_FILES_OUT, MAX_FILES_OUT_BYTES = max_files_out, max_files_out_bytes
    os.set_inheritable(REPORT_FD, False)
    os.mkdir(OUT_DIR)
    try:
        source, args, has_stdin = unpack(sys.stdin.buffer.read())
    except (OSError, ValueError, KeyError, TypeError) as exc:  # the host checked them: unlikely
        fail("main_error", f"the run's inputs could not be put in place: {describe(exc)}")
    sys.stdin = open(0, encoding="utf-8", closefd=False) if has_stdin else open(os.devnull)
    if JAIL_SITE not in sys.path:
        sys.path.append(JAIL_SITE)
    if os.path.isdir(MPL_CONFIG):
        matplotlib_config()
    module = load(source)
    entry = module.__dict__.get("main")
    if not callable(entry):
        fail("no_main", "the script defines no callable main()")
    problem = signature_problem(entry, len(args))
    if problem is not None:
        fail("main_signature", problem)
    try:
        result = entry(*args)
    except SystemExit as exc:
        handle_exit(exc)
    except BaseException as exc:  # the user's code may raise anything
        handle_error(exc, "main()")
    send('{"status": "ok", "result": ' + encode(result) + "}")
