"""The playground at / in a real browser: Playwright driving Chromium against the running image.

Chromium is Debian's `chromium` package (.ci/run installs it) unless PYSANDBOX_CHROMIUM names
another binary; set it empty to use Playwright's own browser (`playwright install chromium`).
One container and one browser serve the module (the plot test adds the matplotlib image's).

Every test fails when the page logged a console error, threw, or made a request that failed
or went anywhere but the service. The one kind of console error tolerated is Chromium's own
"Failed to load resource" line for an API call the service answered with a JSON error (a
422 for a script's error): the page shows those, it did not fail on them.

Screenshots of each test's final state: artifacts/playwright/<test>.png (gitignored), the
phone-width one artifacts/playwright/phone-375.png.
"""
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, FilePayload, Page, Response, expect, sync_playwright

from tests.image.test_docker import run_flags, running  # noqa: F401 (run_flags: a fixture)
from tests.support.servers import REPO

pytestmark = pytest.mark.docker

CHROMIUM = os.environ.get("PYSANDBOX_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "playwright"
RUN_TIMEOUT_MS = 30_000
"""A run's answer, seen in the page (a loaded 2-core CI machine is slow to start a jail)."""
API_PATHS = re.compile(r"^/(execute|jobs/[^/]+|sessions(/[^/]+(/execute)?)?)$")


@pytest.fixture(scope="module")
def service(image: str, run_flags: list[str]) -> Iterator[str]:  # noqa: F811
    """The default image, run as `make run` runs it: its base URL."""
    with running(image, run_flags) as (_, base):
        yield base


@pytest.fixture(scope="module")
def plot_service(plot_image: str, run_flags: list[str]) -> Iterator[str]:  # noqa: F811
    """The image with matplotlib in the jail (`make image-plot`), for the plot test only."""
    with running(plot_image, run_flags) as (_, base):
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    executable = CHROMIUM or None
    if executable and not Path(executable).exists():
        pytest.fail(f"no Chromium at {executable}: apt-get install chromium (Debian), or set "
                    "PYSANDBOX_CHROMIUM to a Chromium binary (empty: Playwright's own browser)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watch:
    """What a page did that a test must not let pass."""

    origin: str
    problems: list[str] = field(default_factory=list)
    api_errors: set[str] = field(default_factory=set)
    """URLs of API calls answered with a JSON error (a script's 422, say)."""
    console: list[ConsoleMessage] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", lambda msg: self.console.append(msg) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        page.on("requestfailed", lambda req: self.problems.append(f"request failed: {req.url} {req.failure}"))
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request) -> None:
        url = urlsplit(request.url)
        if url.scheme in ("blob", "data"):
            if url.scheme == "blob" and not url.path.startswith(self.origin + "/"):
                self.problems.append(f"blob from elsewhere: {request.url}")
        elif f"{url.scheme}://{url.netloc}" != self.origin:
            self.problems.append(f"request outside the service: {request.url}")

    def _response(self, response: Response) -> None:
        if response.status < 400:
            return
        path = urlsplit(response.url).path
        try:
            code = response.json()["error"]["code"] if API_PATHS.match(path) else None
        except (ValueError, KeyError, TypeError):
            code = None
        if code:
            self.api_errors.add(response.url)
        else:
            self.problems.append(f"HTTP {response.status} for {response.url}")

    def check(self) -> None:
        for msg in self.console:
            known = msg.text.startswith("Failed to load resource: the server responded with a status of")
            if not (known and msg.location.get("url") in self.api_errors):
                self.problems.append(f"console error: {msg.text} ({msg.location})")
        if self.problems:
            pytest.fail("the page misbehaved:\n" + "\n".join(self.problems))


@contextmanager
def open_page(browser: Browser, base: str, name: str, width: int = 1280) -> Iterator[Page]:
    """The playground, loaded (its package probe answered) and watched; a screenshot at the end,
    also when the test failed."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    watch = Watch(base)
    watch.attach(page)
    try:
        with page.expect_response(lambda r: urlsplit(r.url).path == "/execute"):
            page.goto(f"{base}/")
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
        context.close()
    watch.check()


@pytest.fixture
def page(browser: Browser, service: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    with open_page(browser, service, request.node.name) as opened:
        yield opened


def run(page: Page, example: str | None = None) -> None:
    """Pick an example (or keep the script), press Run, wait until the run has ended."""
    if example:
        page.get_by_label("Example").select_option(label=example)
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_enabled(timeout=RUN_TIMEOUT_MS)


def editor(page: Page):
    return page.get_by_role("textbox", name="Script", exact=True)


def input_field(page: Page):
    return page.get_by_role("textbox", name=re.compile(r"^Input"))


def set_script(page: Page, script: str) -> None:
    editor(page).fill(script)


def result(page: Page):
    return page.get_by_role("region", name="Result", exact=True)


def stream(page: Page, name: str):
    return page.get_by_role("region", name=name, exact=True).locator("pre")


def test_session_cells_keep_state_in_order_and_a_restart_forgets_it(page: Page) -> None:
    page.get_by_role("button", name="Run all cells").click()
    expect(page.get_by_label("Cell 2 output")).to_contain_text('"a": 4', timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_label("Cell 1 output")).to_contain_text("3")
    expect(page.locator("#session-status")).to_contain_text("2 calls so far")
    page.get_by_role("button", name="Add cell").click()
    page.get_by_label("Cell 3", exact=True).fill("print('from cell 3')\n1 / 0")
    page.get_by_label("Cell 3", exact=True).press("Control+Enter")
    expect(page.get_by_label("Cell 3 output")).to_contain_text("ZeroDivisionError", timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_label("Cell 3 output")).to_contain_text("from cell 3")
    page.get_by_role("button", name="Restart session").click()
    expect(page.locator("#session-status")).to_contain_text("Restarted")
    expect(page.get_by_label("Cell 2 output")).to_be_empty()
    page.get_by_role("button", name="Run cell 2").click()
    expect(page.get_by_label("Cell 2 output")).to_contain_text("NameError", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#session-status")).to_contain_text("1 call so far")


def test_page_and_assets_are_served_with_a_strict_policy(service: str) -> None:
    page = requests.get(f"{service}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        answer = requests.get(f"{service}/playground/{asset}", timeout=10)
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(kind)
        assert answer.headers["Cache-Control"] == "no-cache" and answer.headers["ETag"]
        again = requests.get(f"{service}/playground/{asset}", timeout=10,
                             headers={"If-None-Match": answer.headers["ETag"]})
        assert again.status_code == 304
    assert "<script>" not in page.text and " style=" not in page.text
    missing = requests.get(f"{service}/playground/nothing.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_docs_page_runs_under_its_policy(browser: Browser, service: str) -> None:
    """/docs (Swagger UI) renders and calls the API under its CSP: no violation (a console
    error), nothing from elsewhere, and no framing."""
    answer = requests.get(f"{service}/docs", timeout=10)
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(service)
    watch.attach(page)
    try:
        page.goto(f"{service}/docs")
        operation = page.locator("#operations-default-execute")
        operation.get_by_role("button").first.click()
        operation.get_by_role("button", name="Try it out", exact=True).click()
        with page.expect_response(lambda r: urlsplit(r.url).path == "/execute") as executed:
            operation.get_by_role("button", name="Execute", exact=True).click()
        assert executed.value.status == 200 and executed.value.json()["result"] == {"answer": 42}
        status = operation.locator(".live-responses-table td.response-col_status:not(.col_header)")
        expect(status).to_have_text("200")
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "docs.png", full_page=True)
        context.close()
    watch.check()


def test_a_run_shows_the_result_table_output_and_usage(page: Page) -> None:
    examples = page.get_by_label("Example").locator("option").all_inner_texts()
    assert "Hello" in examples and not any("matplotlib" in name for name in examples)
    run(page, "A pandas table")
    expect(page.get_by_role("status")).to_have_text("Finished.")
    table = page.get_by_role("table")
    expect(table.get_by_role("columnheader")).to_have_text(["city", "temp_c", "temp_f"])
    expect(table.get_by_role("row").nth(1).get_by_role("cell")).to_have_text(["Lyon", "14.5", "58.1"])
    expect(stream(page, "stdout")).to_contain_text("mean")
    expect(stream(page, "stderr")).to_have_text("")
    expect(page.get_by_role("definition").nth(0)).to_have_text(re.compile(r"^\d+ ms$"))
    expect(page.get_by_role("definition").nth(2)).to_have_text(re.compile(r"^[\d.]+ MB$|^n/a$"))
    run(page, "Hello")
    expect(result(page)).to_contain_text('"answer": 42')
    expect(stream(page, "stdout")).to_have_text("hello from the sandbox\n")
    set_script(page, "def main():\n    return {'n': [1, 2], 'square': [1, 4]}\n")  # a dict of columns
    run(page)
    expect(page.get_by_role("table").get_by_role("cell")).to_have_text(["1", "1", "2", "4"])


def test_a_timeout_is_an_error_the_page_names(page: Page) -> None:
    run(page, "A timeout")
    expect(page.get_by_role("alert")).to_contain_text("timeout")
    expect(page.get_by_role("status")).to_have_text("Failed: timeout.")


def test_an_error_shows_its_code_and_marks_its_line(page: Page) -> None:
    page.get_by_label("Example").select_option(label="An error")
    editor(page).press("Control+Enter")  # the keyboard shortcut runs it
    expect(page.get_by_role("status")).to_have_text("Failed: main_error.", timeout=RUN_TIMEOUT_MS)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("main_error")
    expect(alert).to_contain_text("ZeroDivisionError: division by zero")
    expect(page.get_by_text("Error on line 2")).to_be_visible()
    expect(page.locator("#gutter .marked")).to_have_text("2")
    caret = editor(page).evaluate("t => t.value.slice(0, t.selectionStart).split('\\n').length")
    assert caret == 2
    editor(page).press("End")
    editor(page).type(" ")  # editing clears the mark
    expect(page.locator("#gutter .marked")).to_have_count(0)


def test_a_syntax_error_marks_its_line(page: Page) -> None:
    set_script(page, "def main():\n    return 1\n\nx = (\n")
    run(page)
    expect(page.get_by_role("alert")).to_contain_text("syntax_error")
    expect(page.locator("#gutter .marked")).to_have_text("4")


def test_async_run_shows_queued_or_running_then_the_result(page: Page) -> None:
    set_script(page, "import time\n\ndef main():\n"
                     "    time.sleep(1.5)\n    print('slept')\n    return [1, 2]\n")
    page.get_by_label("queued (async job)").check()
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^(Queued|Running) \(job [0-9a-f-]+\)"))
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Running \(job "), timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_role("status")).to_have_text("Finished.", timeout=RUN_TIMEOUT_MS)
    expect(result(page)).to_contain_text("[\n  1,\n  2\n]")
    expect(stream(page, "stdout")).to_have_text("slept\n")


def test_an_async_job_can_be_cancelled(page: Page) -> None:
    set_script(page, "import time\n\ndef main():\n    time.sleep(20)\n")
    page.get_by_label("queued (async job)").check()
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Running \(job "), timeout=RUN_TIMEOUT_MS)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.get_by_role("status")).to_have_text("Canceled.", timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_role("alert")).to_contain_text("canceled")
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()


def test_what_the_api_returns_is_shown_as_text_never_run(page: Page) -> None:
    hostile = "<img src=x onerror=\"window.pwned=1\">"
    set_script(page, f"H = {hostile!r}\n\ndef main():\n    print(H)\n    return [{{H: H}}]\n")
    run(page)
    table = page.get_by_role("table")
    expect(table.get_by_role("columnheader")).to_have_text([hostile])
    expect(table.get_by_role("cell")).to_have_text([hostile])
    expect(stream(page, "stdout")).to_have_text(hostile + "\n")
    set_script(page, f"def main():\n    raise ValueError({hostile!r})\n")
    run(page)
    expect(page.get_by_role("alert")).to_contain_text(f"ValueError: {hostile}")
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.pwned") is None


def test_input_and_stdin_reach_the_script(page: Page) -> None:
    run(page, "Input and stdin")
    cells = page.get_by_role("table").get_by_role("cell")
    expect(cells).to_have_text(["Ada", "Hello, Ada!", "Grace", "Hello, Grace!"])
    set_script(page, "def main():\n    return 1\n")  # the example's input stays: main() cannot take it
    run(page)
    expect(page.get_by_role("alert")).to_contain_text("main_signature")
    expect(page.get_by_role("alert")).to_contain_text("main(input)")


def test_files_go_in_and_come_back_as_downloads(page: Page) -> None:
    page.get_by_label("Example").select_option(label="Files in and out")
    page.get_by_role("button", name=re.compile(r"^Files")).set_input_files(
        files=[FilePayload(name="data.csv", mimeType="text/csv", buffer=b"a,b\n1,2\n")])
    run(page)
    expect(result(page)).to_contain_text('"files_given": [\n    "data.csv"\n  ]')
    link = page.get_by_role("link", name="squares.csv")
    expect(link).to_be_visible()
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "squares.csv"
    assert Path(download.value.path()).read_bytes().startswith(b"n,square\r\n0,0\r\n1,1\r\n")


def test_a_plot_is_shown_inline_where_matplotlib_is(browser: Browser, plot_service: str) -> None:
    with open_page(browser, plot_service, "plot") as page:
        run(page, "A plot (matplotlib)")
        expect(page.get_by_role("status")).to_have_text("Finished.")
        plot = page.get_by_role("img", name="plot.png")
        expect(plot).to_be_visible()
        assert plot.evaluate("image => [image.complete, image.naturalWidth]") == [True, 512]
        expect(page.get_by_role("link", name="plot.png")).to_be_visible()


def test_keyboard_only_edit_and_run(page: Page) -> None:
    page.keyboard.press("Tab")  # the API docs link
    page.keyboard.press("Tab")
    expect(page.get_by_label("Example")).to_be_focused()
    page.keyboard.press("Tab")
    expect(editor(page)).to_be_focused()
    page.keyboard.press("Control+a")
    page.keyboard.type("def main():\n")  # Enter after a colon indents the next line
    page.keyboard.type("return 6 * 7")
    assert editor(page).input_value() == "def main():\n    return 6 * 7"
    page.keyboard.press("Tab")  # indents, stays in the editor
    expect(editor(page)).to_be_focused()
    page.keyboard.press("Control+Enter")
    expect(result(page)).to_contain_text("42", timeout=RUN_TIMEOUT_MS)
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")  # Esc then Tab leaves the editor: the next stop is Run
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_focused()


def test_readable_at_phone_width(browser: Browser, service: str) -> None:
    with open_page(browser, service, "phone-375", width=375) as page:
        run(page, "A pandas table")
        expect(page.get_by_role("table")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        for control in (page.get_by_label("Example"), editor(page), input_field(page),
                      page.get_by_role("button", name="Run", exact=True)):
            box = control.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375


def test_an_api_key_is_asked_for_and_sent_in_a_header(browser: Browser, image: str,  # noqa: F811
                                                     run_flags: list[str]) -> None:  # noqa: F811
    key = secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    with running(image, run_flags, f"PYSANDBOX_API_KEYS=playground:{digest}") as (_, base), \
            open_page(browser, base, "api-key") as page:
        sent: list[tuple[str, str | None]] = []
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        dialog = page.get_by_role("dialog", name="API key")
        expect(dialog).to_contain_text("an API key is required")  # the package probe met the 401
        dialog.get_by_label("Key").fill("not-the-key")
        dialog.get_by_role("button", name="Use this key").click()
        expect(dialog).to_contain_text("unknown API key")
        dialog.get_by_label("Key").fill(key)
        dialog.get_by_role("button", name="Use this key").click()
        expect(dialog).to_be_hidden()
        sent.clear()
        run(page, "Hello")
        expect(page.get_by_role("status")).to_have_text("Finished.")
        assert page.evaluate("sessionStorage.getItem('pysandbox.apiKey')") == key
        calls = [auth for url, auth in sent if urlsplit(url).path == "/execute"]
        assert calls and all(auth == f"Bearer {key}" for auth in calls)
        assert not any(key in url for url, _ in sent)
        page.get_by_role("button", name="Forget API key").click()
        assert page.evaluate("sessionStorage.getItem('pysandbox.apiKey')") is None


def test_invalid_input_json_is_flagged_before_any_request(page: Page) -> None:
    input_field(page).fill("{not json")
    run(page)
    expect(page.get_by_text("The input is not JSON")).to_be_visible()
    expect(input_field(page)).to_be_focused()
    expect(page.get_by_role("status")).to_have_text("Ready.")


@pytest.fixture(scope="module", autouse=True)
def _fresh_artifacts() -> None:
    """This module's screenshots only: none left from an earlier run to be mistaken for new."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
