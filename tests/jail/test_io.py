"""What a run is given and what it gives back, against the real jail and hostile scripts: input,
stdin, files written in, files collected from out/ (links, FIFOs, sockets, devices, growing,
sparse and countless files, bad names) and forged reports of them. Every test runs with the four
kinds of jail (one-off and warm, with this host's cgroups and without), as tests/jail/test_adversarial.py.

The HTTP side (names, base64, caps as 400/413 answers) is in tests/service/test_api.py.
"""
import base64
import json
import time
import uuid
from pathlib import Path

import pytest

from jail import Limits, Outcome, RunInput, Sandbox, Status

QUICK = Limits(timeout_s=5.0, memory_mb=128)
SMALL_CAPS = Limits(timeout_s=5.0, memory_mb=128, max_files_out=3, max_files_out_bytes=4096)


def jailed(sandbox: Sandbox, script: str, limits: Limits = QUICK, inputs: RunInput | None = None) -> Outcome:
    outcome = sandbox.run(script, limits, inputs=inputs)
    assert isinstance(outcome, Outcome)
    return outcome


def names(outcome: Outcome) -> list[str]:
    return [f.name for f in outcome.files]


def ok(outcome: Outcome) -> Outcome:
    assert outcome.status is Status.OK, (outcome.status, outcome.message, outcome.stderr[-800:],
                                         outcome.traceback)
    return outcome


# ------------------------------------------------------------------------------------------
# in: input, stdin, files


def test_input_stdin_and_files_arrive_as_given(sandbox):
    script = ("import os, sys\ndef main(input):\n"
              "    files = {n: open(n, 'rb').read().hex() for n in ('a.txt', 'd/e/f.bin')}\n"
              "    owner = {n: os.stat(n).st_uid for n in ('a.txt', 'd/e/f.bin', 'd')}\n"
              "    return {'input': input, 'stdin': sys.stdin.read(), 'files': files, 'owner': owner,\n"
              "            'listing': sorted(os.listdir('.')), 'cwd': os.getcwd()}")
    given = RunInput(input_json=json.dumps({"é": [1, None]}), stdin=b"ligne\n" * 3,
                     files=(("a.txt", b"hello"), ("d/e/f.bin", bytes(range(256)))))
    result = ok(jailed(sandbox, script, inputs=given)).result
    assert result["input"] == {"é": [1, None]} and result["stdin"] == "ligne\n" * 3
    assert result["files"] == {"a.txt": b"hello".hex(), "d/e/f.bin": bytes(range(256)).hex()}
    assert set(result["owner"].values()) == {65534} and result["cwd"] == "/tmp"
    assert result["listing"] == ["a.txt", "d", "out"], "stdin's file is unlinked; out/ is made empty"


def test_files_in_never_touch_the_hosts_filesystem(sandbox):
    name = f"pysandbox-io-{uuid.uuid4().hex}"
    ok(jailed(sandbox, "def main():\n    return 1", inputs=RunInput(files=((name, b"x"),))))
    assert not list(Path("/tmp").glob(name)) and not list(Path.cwd().glob(name))


def test_a_megabyte_of_stdin_reaches_a_child_process(sandbox):
    data = bytes(range(256)) * 4096
    script = ("import hashlib, subprocess\ndef main():\n"
              "    out = subprocess.run(['/usr/bin/cat'], capture_output=True).stdout\n"
              "    return [len(out), hashlib.sha256(out).hexdigest()]")
    import hashlib
    assert ok(jailed(sandbox, script, inputs=RunInput(stdin=data))).result == [
        len(data), hashlib.sha256(data).hexdigest()]


def test_without_stdin_input_sees_end_of_file(sandbox):
    outcome = jailed(sandbox, "def main():\n    return input()", inputs=RunInput(input_json=None))
    assert outcome.status is Status.MAIN_ERROR and "EOFError" in outcome.message


@pytest.mark.parametrize("script, given", [
    ("def main():\n    return 1", RunInput(input_json="1")),
    ("def main(a):\n    return 1", None),
    ("def main(a, b):\n    return 1", RunInput(input_json="[1, 2]")),
    ("main = print.__class__", RunInput(input_json="1")),
])
def test_a_main_that_cannot_take_the_call_is_main_signature(sandbox, script, given):
    outcome = jailed(sandbox, script, inputs=given)
    assert outcome.status is Status.MAIN_SIGNATURE and "main" in outcome.message, outcome.message


# ------------------------------------------------------------------------------------------
# out: only regular files, within the caps, never followed


OUT_TRICKS = r'''
import os, socket, threading
def main():
    made = {}
    def attempt(name, fn):
        try:
            fn()
            made[name] = True
        except OSError as exc:
            made[name] = str(exc)
    open('out/real.txt', 'w').write('real')
    attempt('link_passwd', lambda: os.symlink('/etc/passwd', 'out/passwd'))
    attempt('link_site', lambda: os.symlink('/opt/site/numpy/__init__.py', 'out/numpy.py'))
    attempt('link_dir', lambda: os.symlink('/opt/site', 'out/site'))
    attempt('link_up', lambda: os.symlink('..', 'out/up'))
    attempt('fifo', lambda: os.mkfifo('out/fifo'))
    attempt('device', lambda: os.mknod('out/null', 0o666 | 0o020000, os.makedev(1, 3)))
    attempt('socket', lambda: socket.socket(socket.AF_UNIX).bind('out/sock'))
    attempt('hardlink_own', lambda: (open('mine', 'w').write('mine'), os.link('mine', 'out/hard')))
    attempt('hardlink_site', lambda: os.link('/opt/site/numpy/__init__.py', 'out/hard_site'))
    attempt('newline', lambda: open('out/bad\nname', 'w').write('x'))
    attempt('control', lambda: open('out/bell\x07', 'w').write('x'))
    attempt('not_utf8', lambda: open(b'out/\xff\xfe', 'w').write('x'))
    deep = 'out/' + '/'.join(['d'] * 9)
    os.makedirs(deep)
    open(deep + '/deep.txt', 'w').write('x')
    open('out/d/ok.txt', 'w').write('x')
    return made
'''


def test_only_regular_files_come_back_and_nothing_is_followed(sandbox):
    outcome = ok(jailed(sandbox, OUT_TRICKS))
    made = outcome.result
    assert made["link_site"] is True and made["fifo"] is True and made["socket"] is True, made
    assert made["device"] is not True and made["hardlink_site"] is not True, made
    assert names(outcome) == ["d/ok.txt", "hard", "real.txt"], names(outcome)
    contents = {f.name: base64.b64decode(f.content) for f in outcome.files}
    assert contents == {"d/ok.txt": b"x", "hard": b"mine", "real.txt": b"real"}
    assert outcome.files_truncated is False


@pytest.mark.parametrize("replace", [
    "os.rmdir('out'); os.symlink('/opt/site', 'out')",
    "os.rmdir('out'); os.symlink('/opt/site/numpy/__init__.py', 'out')",
    "os.rmdir('out'); open('out', 'w').write('a file')",
    "os.rmdir('out'); os.mkfifo('out')",
    "os.rmdir('out')",
    "os.chmod('out', 0)",
])
def test_out_replaced_or_locked_gives_no_files_and_no_hang(sandbox, replace):
    start = time.monotonic()
    outcome = ok(jailed(sandbox, f"import os\ndef main():\n    {replace}\n    return 1"))
    assert outcome.files == () and time.monotonic() - start < 4


def test_a_fifo_swapped_in_during_collection_cannot_block_it(sandbox):
    script = ("import os, threading\n"
              "def swap():\n"
              "    while True:\n"
              "        for make in (lambda: open('out/x', 'w').close(), lambda: os.mkfifo('out/x')):\n"
              "            try:\n                os.unlink('out/x')\n"
              "            except OSError:\n                pass\n"
              "            try:\n                make()\n            except OSError:\n                pass\n"
              "def main():\n    threading.Thread(target=swap, daemon=True).start()\n    return 1")
    for _ in range(3):
        outcome = ok(jailed(sandbox, script))
        assert names(outcome) in ([], ["x"]) and all(f.size == 0 for f in outcome.files)


def test_a_file_growing_during_collection_stays_within_the_cap(sandbox):
    script = ("import os\ndef main():\n    if os.fork() == 0:\n"
              "        with open('out/grow', 'ab') as f:\n            while True:\n"
              "                f.write(b'x' * 65536)\n                f.flush()\n"
              "    while not os.path.exists('out/grow') or os.path.getsize('out/grow') < 2048:\n"
              "        pass\n    return 1")
    outcome = jailed(sandbox, script, SMALL_CAPS)
    assert outcome.status in (Status.OK, Status.TIMEOUT), outcome.message
    assert sum(f.size for f in outcome.files) <= SMALL_CAPS.max_files_out_bytes


def test_ten_thousand_tiny_files_are_capped_quickly(sandbox):
    script = ("def main():\n    for n in range(10_000):\n"
              "        open(f'out/{n:05}', 'w').close()\n    return 1")
    start = time.monotonic()
    outcome = ok(jailed(sandbox, script, Limits(timeout_s=10.0, memory_mb=128)))
    assert names(outcome) == [f"{n:05}" for n in range(16)] and outcome.files_truncated is True
    assert time.monotonic() - start < 9


def test_a_huge_sparse_file_is_left_out_unread(sandbox):
    script = ("import os\ndef main():\n    with open('out/sparse', 'wb') as f:\n"
              "        f.truncate(15 * 1024 * 1024)\n    open('out/small', 'w').write('s')\n"
              "    return os.stat('out/sparse').st_blocks")
    outcome = ok(jailed(sandbox, script, SMALL_CAPS))
    assert outcome.result == 0 and names(outcome) == ["small"] and outcome.files_truncated is True


def test_files_up_to_the_default_caps_come_back_whole(sandbox):
    script = ("import os\ndef main():\n    for n in range(2):\n"
              "        open(f'out/{n}.bin', 'wb').write(os.urandom(4 * 1024 * 1024))\n    return 1")
    outcome = ok(jailed(sandbox, script, Limits(timeout_s=10.0, memory_mb=256)))
    assert [f.size for f in outcome.files] == [4 * 1024 * 1024] * 2 and outcome.files_truncated is False
    assert all(len(base64.b64decode(f.content)) == f.size for f in outcome.files)


def test_files_past_the_count_or_size_cap_are_left_out_and_flagged(sandbox):
    script = ("def main():\n    for n in range(5):\n        open(f'out/{n}', 'w').write('x' * 1500)\n")
    outcome = jailed(sandbox, script + "    return 1", SMALL_CAPS)
    assert names(ok(outcome)) == ["0", "1"] and outcome.files_truncated is True


def test_files_come_back_with_the_scripts_own_errors_not_after_a_kill(sandbox):
    failed = jailed(sandbox, "def main():\n    open('out/log', 'w').write('x')\n    raise KeyError(1)")
    assert failed.status is Status.MAIN_ERROR and names(failed) == ["log"]
    killed = jailed(sandbox, "import time\ndef main():\n    open('out/log', 'w').write('x')\n"
                    "    time.sleep(9)",
                    Limits(timeout_s=1.0, memory_mb=128))
    assert killed.status is Status.TIMEOUT and killed.files == ()


def test_media_types_come_from_the_extension(sandbox):
    script = ("def main():\n    for n in ('p.png', 'd.json', 'n.noext', 'noext'):\n"
              "        open('out/' + n, 'w').close()\n    return 1")
    types = {f.name: f.media_type for f in ok(jailed(sandbox, script)).files}
    assert types == {"d.json": "application/json", "n.noext": "application/octet-stream",
                     "noext": "application/octet-stream", "p.png": "image/png"}


# ------------------------------------------------------------------------------------------
# forged reports: the script replaces the harness's collector; the host must not believe it

def forged(line: object) -> str:
    text = line if isinstance(line, str) else json.dumps(line)
    return (f"import __main__\n__main__.collect = lambda: b'\\n' + {text!r}.encode()\n"
            "def main():\n    return 1")


def entry(name: str = "f", content: str = "eA==") -> dict:
    return {"name": name, "content": content}


@pytest.mark.parametrize("line", [
    {"files": [entry("../escape")], "truncated": False},
    {"files": [entry("/etc/passwd")], "truncated": False},
    {"files": [entry("a\nb")], "truncated": False},
    {"files": [entry("a/../../b")], "truncated": False},
    {"files": [entry("")], "truncated": False},
    {"files": [entry("x" * 300)], "truncated": False},
    {"files": [entry("f"), entry("f")], "truncated": False},
    {"files": [entry(f"f{n}") for n in range(17)], "truncated": False},
    {"files": [entry("big", base64.b64encode(b"x" * (8 * 1024 * 1024 + 1)).decode())], "truncated": False},
    {"files": [entry("f", "not base64!")], "truncated": False},
    {"files": [entry("f", "eA")], "truncated": False},
    {"files": [{"name": "f", "content": "eA==", "size": 1}], "truncated": False},
    {"files": [{"name": 1, "content": "eA=="}], "truncated": False},
    {"files": [entry()], "truncated": "no"},
    {"files": {"f": "eA=="}, "truncated": False},
    {"files": [entry()]},
    [entry()],
    "not json {",
    '{"files": [], "truncated": NaN}',
])
def test_a_forged_files_report_is_invalid_result(sandbox, line):
    outcome = jailed(sandbox, forged(line))
    assert outcome.status is Status.INVALID_RESULT and outcome.files == (), (outcome.status, names(outcome))


def test_a_forged_report_that_keeps_the_rules_is_only_the_scripts_own_data(sandbox):
    outcome = ok(jailed(sandbox, forged({"files": [entry("ok.txt")], "truncated": True})))
    assert names(outcome) == ["ok.txt"] and outcome.files[0].size == 1 and outcome.files_truncated is True


def test_a_report_flooding_the_channel_is_stopped(sandbox):
    outcome = jailed(sandbox, "import __main__\n__main__.collect = lambda: b'\\n' + b'x' * (40 * 2**20)\n"
                     "def main():\n    return 1")
    assert outcome.status in (Status.RESULT_TOO_LARGE, Status.INVALID_RESULT) and outcome.files == ()


def test_a_file_whose_path_is_over_the_name_cap_is_left_out_not_the_result(sandbox):
    """Issue 16: a path under out/ past 1024 characters lost the whole result as invalid_result."""
    deep = "/".join(["d" * 200] * 5)  # 1004 characters of directories: the file's path is longer
    script = ("import os\ndef main():\n"
              f"    os.makedirs('out/{deep}')\n"
              f"    open('out/{deep}/' + 'f' * 40, 'w').write('long')\n"
              f"    open('out/{deep}/f', 'w').write('fits')\n"
              "    return 7")
    outcome = ok(jailed(sandbox, script))
    assert outcome.result == 7 and names(outcome) == [f"{deep}/f"]


def test_the_harness_and_the_host_agree_on_the_name_cap():
    from jail import harness, runinput

    assert harness.MAX_OUT_NAME_CHARS == runinput.MAX_NAME_CHARS
