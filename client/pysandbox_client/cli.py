"""The `pysandbox` command: run a script on the service, look at or cancel its jobs.

    pysandbox run analysis.py --input data.json --file data.csv [--async] [--timeout 10]
                              [--memory 256] [--out DIR]
    pysandbox run analysis.py --no-wait          # queues it, prints the job's id
    pysandbox jobs get ID [--out DIR]
    pysandbox jobs cancel ID

The run's stdout and stderr go to this command's own; then stdout gets one line of JSON:
what main() returned, or the error (`{"error": {"code", "message", "request_id"}}`). Files the
script left in out/ are saved under --out (./out by default). The exit status says who failed
(EXIT below). --url and --api-key default to PYSANDBOX_URL and PYSANDBOX_API_KEY.
"""
import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pysandbox_client.client import NO_INPUT, Client, Retries
from pysandbox_client.errors import CanceledError, ClientError, PySandboxError, ScriptError
from pysandbox_client.models import JobState, OutFile, RunOutput, RunResult, save_files

EXIT = {"ok": 0, "script": 1, "usage": 2, "refused": 3, "service": 4, "interrupted": 130}
"""0 done; 1 the script failed or its job was canceled; 2 bad arguments or an unreadable file;
3 the service refused the request (4xx: a bad request, a key, a rate limit, an unknown job);
4 the service failed, was unavailable (after the retries) or could not be reached; 130 Ctrl-C
(a job being waited for is canceled first)."""


class Progress:
    """A spinner on a terminal's stderr while a job runs: its id, status and time so far."""

    FRAMES = "|/-\\"

    def __init__(self, job_id: str, stream: TextIO) -> None:
        self.job_id, self.stream, self.status = job_id, stream, "queued"
        self.started, self.done = time.monotonic(), threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)

    def update(self, state: JobState) -> None:
        """The job's latest state, from a poll."""
        self.status = state.status

    def _spin(self) -> None:
        frame = 0
        while not self.done.wait(0.1):
            elapsed = time.monotonic() - self.started
            line = f"{self.FRAMES[frame % 4]} job {self.job_id} {self.status} {elapsed:.1f}s"
            self.stream.write(f"\r{line}\033[K")
            self.stream.flush()
            frame += 1

    def __enter__(self) -> "Progress":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()
        self.stream.write("\r\033[K")
        self.stream.flush()


class _Usage(Exception):
    """Bad arguments or an unreadable file: exit 2."""


def _read(path: str, what: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise _Usage(f"cannot read {what} {path}: {exc.strerror}") from None


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if [args.script, args.input, args.stdin].count("-") > 1:
        raise _Usage("only one of the script, --input and --stdin can be read from standard input")
    kwargs: dict[str, Any] = {"timeout": args.timeout, "memory_mb": args.memory, "input": NO_INPUT,
                              "files": {Path(path).name: _read(path, "file") for path in args.file}}
    if args.input is not None:
        try:
            kwargs["input"] = json.loads(_read(args.input, "input"))
        except ValueError as exc:
            raise _Usage(f"--input {args.input} is not JSON: {exc}") from None
    if args.stdin is not None:
        kwargs["stdin"] = _read(args.stdin, "stdin").decode("utf-8", "replace")
    return kwargs


def _show_output(output: RunOutput | None) -> None:
    """The run's stdout and stderr on ours; the JSON that follows starts a line of its own."""
    if output:
        sys.stdout.write(output.stdout if output.stdout.endswith("\n") or not output.stdout
                         else output.stdout + "\n")
        sys.stderr.write(output.stderr)


def _save(files: list[OutFile] | None, out: str) -> None:
    if files:
        save_files(files, Path(out))


def _print_json(value: Any) -> None:
    print(json.dumps(value))


def _cmd_run(client: Client, args: argparse.Namespace) -> int:
    script = _read(args.script, "script").decode("utf-8", "replace")
    kwargs = _run_kwargs(args)
    if args.no_wait:
        print(client.submit(script, **kwargs).id)
        return EXIT["ok"]
    if not args.run_async:
        result = client.run(script, **kwargs)
    else:
        result = _wait(client, client.submit(script, **kwargs).id, args)
    _show_output(result)
    _save(result.files, args.out)
    _print_json(result.result)
    return EXIT["ok"]


def _wait(client: Client, job_id: str, args: argparse.Namespace) -> RunResult:
    """The job's result, with a spinner on a terminal; Ctrl-C cancels the job."""
    try:
        if not sys.stderr.isatty():
            return client.wait(job_id)
        with Progress(job_id, sys.stderr) as progress:
            return client.wait(job_id, on_poll=progress.update)
    except KeyboardInterrupt:
        _cancel(job_id, args)
        raise


def _cancel(job_id: str, args: argparse.Namespace) -> None:
    """Cancel the job Ctrl-C left, on a client of its own: the interrupted poll may have left the
    other's connection mid-answer (httpx's pool is not safe to reuse after a KeyboardInterrupt).
    A cancel that fails is said on stderr; the exit status stays Ctrl-C's."""
    try:
        with _client(args) as fresh:
            fresh.cancel(job_id)
    except PySandboxError as error:
        print(f"pysandbox: job {job_id} could not be canceled: {error}", file=sys.stderr)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key, retries=Retries(attempts=args.retries))


def _cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    state = client.get(args.id) if args.action == "get" else client.cancel(args.id)
    _save(state.files, args.out)
    _print_json(state.model_dump(mode="json", exclude={"files": {"__all__": {"content"}}}))
    return EXIT["ok"]


def _fail(error: PySandboxError) -> int:
    """Print the error (stdout: JSON; stderr: for people) and return its exit status."""
    _show_output(error.output)
    _print_json({"error": {"code": error.code, "message": error.message, "request_id": error.request_id}})
    print(f"pysandbox: {error}", file=sys.stderr)
    if error.traceback:
        sys.stderr.write(error.traceback)
    if isinstance(error, ScriptError | CanceledError):
        return EXIT["script"]
    return EXIT["refused"] if isinstance(error, ClientError) else EXIT["service"]


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the service (default: $PYSANDBOX_URL, else http://localhost:8080)")
    common.add_argument("--api-key", help="the API key (default: $PYSANDBOX_API_KEY)")
    common.add_argument("--retries", type=int, default=Retries.attempts, metavar="N",
                        help="times to retry a 429 or 503 after its Retry-After (default: %(default)s)")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", default="out", metavar="DIR",
                     help="where to save the files the script left in out/ (default: %(default)s)")
    main = argparse.ArgumentParser(prog="pysandbox", description=__doc__.split("\n\n")[0],
                                   epilog="exit status: 0 ok, 1 the script failed, 2 usage, "
                                          "3 the service refused the request, 4 the service failed")
    commands = main.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common, out], help="run a script's main()")
    run.add_argument("script", help="the script's file ('-': standard input)")
    run.add_argument("--input", metavar="FILE", help="a JSON file: main(input) is called with it")
    run.add_argument("--stdin", metavar="FILE", help="a file for the script's standard input")
    run.add_argument("--file", action="append", default=[], metavar="PATH",
                     help="a file for the run's working directory, by its name (repeatable)")
    run.add_argument("--async", dest="run_async", action="store_true",
                     help="queue it as a job and wait for it (a spinner on a terminal)")
    run.add_argument("--no-wait", action="store_true",
                     help="queue it as a job and print the job's id, for `pysandbox jobs`")
    run.add_argument("--timeout", type=float, metavar="S", help="wall-time limit in seconds")
    run.add_argument("--memory", type=int, metavar="MB", help="memory limit in MiB")
    jobs = commands.add_parser("jobs", help="a job's state, or cancel it")
    actions = jobs.add_subparsers(dest="action", required=True)
    actions.add_parser("get", parents=[common, out], help="print a job's state").add_argument("id")
    actions.add_parser("cancel", parents=[common, out], help="cancel a job").add_argument("id")
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; its exit status."""
    args = parser().parse_args(argv)
    if args.retries < 0:
        parser().error("--retries must be 0 or more")
    try:
        with _client(args) as client:
            return _cmd_run(client, args) if args.command == "run" else _cmd_jobs(client, args)
    except _Usage as exc:
        print(f"pysandbox: {exc}", file=sys.stderr)
        return EXIT["usage"]
    except PySandboxError as error:
        return _fail(error)
    except KeyboardInterrupt:
        return EXIT["interrupted"]


if __name__ == "__main__":
    sys.exit(main())
