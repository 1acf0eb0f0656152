"""What a run is given besides its script (main()'s input, stdin, files), the rules for file
names in and out, and the envelope that carries it all to the harness on the jail's stdin.

The harness (jail/harness.py) reads the other end. Without a RunInput the jail gets the bare
script as before: a run that asks for nothing new pays for nothing new.
"""
import json
import re
from dataclasses import dataclass

ENVELOPE_MARK = b"\0"
"""First byte of an envelope. No script starts with it: compile() refuses NUL bytes."""
OUT_DIR = "out"
"""The output directory, relative to the run's working directory /tmp."""
MAX_NAME_DEPTH = 8
MAX_NAME_CHARS = 1024
MAX_PART_BYTES = 255
IN_PART = re.compile(r"[A-Za-z0-9._-]{1,255}\Z")
_PART = (r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,253}"
         r"|\.\.[A-Za-z0-9._-]{1,253})")
_FIRST = (r"(?:[A-Za-np-z0-9_-][A-Za-z0-9._-]{0,254}|o|o[A-Za-tv-z0-9._-][A-Za-z0-9._-]{0,253}|ou"
          r"|ou[A-Za-su-z0-9._-][A-Za-z0-9._-]{0,252}|out[A-Za-z0-9._-]{1,252}"
          r"|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,253}|\.\.[A-Za-z0-9._-]{1,253})")
IN_NAME_PATTERN = f"^{_FIRST}(?:/{_PART}){{0,{MAX_NAME_DEPTH - 1}}}$"
"""in_name_problem()'s rule as one regular expression without lookarounds, for the OpenAPI
document (a part is not `.` or `..`, the first is not `out`); tests/service/test_api.py checks they agree."""
OUT_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]")
"""Control characters (newlines included), separators: no name returned holds any."""


@dataclass(frozen=True)
class RunInput:
    """A run's inputs. Validated by the caller (the API); the harness writes them as given."""

    input_json: str | None = None
    """main()'s one argument as JSON text; None calls main() with none."""
    stdin: bytes = b""
    """What the script reads on fd 0 (sys.stdin, input(), its children)."""
    files: tuple[tuple[str, bytes], ...] = ()
    """(name, content) written under /tmp before the script runs; names pass in_name_problem()."""


def envelope(source: bytes, given: RunInput) -> bytes:
    """The script and its inputs as the harness reads them: the mark, one line of JSON saying
    how long each part is, then the parts' raw bytes (no base64 on the way in)."""
    header: dict[str, object] = {"script": len(source), "stdin": len(given.stdin),
                                 "files": [[name, len(data)] for name, data in given.files]}
    if given.input_json is not None:
        header["input"] = given.input_json
    return b"".join([ENVELOPE_MARK, json.dumps(header).encode(), b"\n", source, given.stdin,
                     *(data for _, data in given.files)])


def in_name_problem(name: str) -> str | None:
    """Why `name` cannot be an input file's name, or None: relative, `/`-separated parts of
    `[A-Za-z0-9._-]`, no `.` or `..`, at most MAX_NAME_DEPTH deep, not under `out/`."""
    if not name or len(name) > MAX_NAME_CHARS:
        return f"a name must have 1 to {MAX_NAME_CHARS} characters"
    parts = name.split("/")
    if len(parts) > MAX_NAME_DEPTH:
        return f"a name may have at most {MAX_NAME_DEPTH} parts"
    for part in parts:
        if part in (".", "..") or not IN_PART.match(part):
            return ("each part of a name (between '/') must be 1 to 255 of A-Z a-z 0-9 . _ -, "
                    "not '.' or '..', with no leading '/'")
    if parts[0] == OUT_DIR:
        return f"'{OUT_DIR}/' is the output directory; input files cannot go there"
    return None


def out_name_problem(name: str) -> str | None:
    """Why `name` cannot be an output file's name, or None: relative, `/`-separated parts of
    printable UTF-8 (no control characters), no `.` or `..`, bounded like input names."""
    if not name or len(name) > MAX_NAME_CHARS:
        return "bad length"
    parts = name.split("/")
    if len(parts) > MAX_NAME_DEPTH:
        return "too deep"
    for part in parts:
        if part in ("", ".", "..") or OUT_BAD_CHARS.search(part):
            return "bad part"
        try:
            if len(part.encode("utf-8")) > MAX_PART_BYTES:
                return "part too long"
        except UnicodeEncodeError:
            return "not UTF-8"
    return None
