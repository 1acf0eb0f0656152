"""The settings (shared/settings.py): read once, typed, typos warned, and the README's table of
them true to the code. No jail and no root needed."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from api import create_app
from shared.settings import DEFAULTS, OTHER_NAMES, VARIABLES, load, unknown_names
from tests.support.servers import REPO

CONFIGURATION_TABLE = REPO / "docs" / "configuration.md"
"""The page whose table (rows starting with a variable's name) lists the settings."""
NAME = re.compile(r"`([A-Z][A-Z0-9_]+)`")


def table_rows(path: Path = CONFIGURATION_TABLE) -> list[tuple[list[str], list[str]]]:
    """The configuration table's rows: (variable names, the default of each, or [] if not one
    per name)."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = NAME.findall(cells[0]) if line.startswith("| `") else []
        if names:
            defaults = [part.strip() for part in cells[1].split(" / ")]
            rows.append((names, defaults if len(defaults) == len(names) else []))
    return rows


def test_the_table_names_every_setting_and_only_known_ones():
    named = {name for names, _ in table_rows() for name in names}
    assert set(VARIABLES) - named == set()
    assert {name for name in named if name.startswith("PYSANDBOX_")} - set(VARIABLES) - OTHER_NAMES == set()


def test_the_tables_defaults_are_the_settings():
    checked = 0
    for names, defaults in table_rows():
        for name, written in zip(names, defaults, strict=False):
            if name not in VARIABLES:
                continue
            value = getattr(DEFAULTS, VARIABLES[name])
            try:
                parsed = json.loads(written)
            except ValueError:
                parsed = written
            if isinstance(parsed, bool | int | float) or parsed == value:
                assert parsed == value, f"{name}: the table says {written}, the code {value!r}"
                checked += 1
    assert checked >= 20


def test_values_are_json_else_strings():
    settings = load({}, {"PYSANDBOX_MAX_TIMEOUT_S": "9", "PYSANDBOX_FAIR_SHARING": "false",
                         "PYSANDBOX_RATE_LIMIT": "60/minute", "REDIS_URL": "redis://r:6379/0",
                         "PYSANDBOX_LOG_FORMAT": "Text"})
    assert (settings.max_timeout_s, settings.fair_sharing, settings.rate_limit, settings.redis_url,
            settings.log_format) == (9.0, False, "60/minute", "redis://r:6379/0", "text")


@pytest.mark.parametrize("name, value", [("PYSANDBOX_MAX_TIMEOUT_S", "soon"), ("PYSANDBOX_MAX_PIDS", "1.5"),
                                         ("PYSANDBOX_METRICS", "1"), ("PYSANDBOX_API_KEYS", "12"),
                                         ("PYSANDBOX_LOG_FORMAT", "xml")])
def test_a_wrong_type_is_refused_naming_the_variable(name, value):
    with pytest.raises(ValueError, match=f"^{name}: "):
        load({}, {name: value})


def test_derived_defaults_follow_what_they_derive_from():
    settings = load({"MAX_CONCURRENT_RUNS": 3}, {"PYSANDBOX_REDIS_MEMORY_MB": "400",
                                                 "PYSANDBOX_MAX_QUEUED_JOBS": "40",
                                                 "PYSANDBOX_WARM_JAILS": "-1"})
    assert (settings.warm_jails, settings.max_queued_jobs_per_client, settings.storage_budget_mb,
            settings.storage_budget_per_client_mb) == (3, 10, 300, 100)


def test_unknown_names_come_with_the_nearest_known_one():
    assert unknown_names({"PYSANDBOX_MAX_TIMEOUT": "9", "PYSANDBOX_FAIR_SHARE": "0", "PYSANDBOX_WORKERS": "1",
                          "PYSANDBOX_NOTHING_LIKE_IT": "1", "PATH": "/bin"}) == {
        "PYSANDBOX_FAIR_SHARE": "PYSANDBOX_FAIR_SHARING", "PYSANDBOX_MAX_TIMEOUT": "PYSANDBOX_MAX_TIMEOUT_S",
        "PYSANDBOX_NOTHING_LIKE_IT": None}


def test_the_app_warns_of_a_typo_at_start(monkeypatch, capfd):
    """An API that only enqueues starts without a jail or Redis: enough to see its start."""
    monkeypatch.setenv("PYSANDBOX_MAX_TIMEOUT", "9")
    create_app({"EXECUTE_VIA_QUEUE": True, "REDIS_URL": "redis://127.0.0.1:9/0"})
    line = next(json.loads(line) for line in capfd.readouterr().err.splitlines()
                if "PYSANDBOX_MAX_TIMEOUT " in line)
    assert line["severity"] == "WARNING"
    assert line["message"].endswith("did you mean PYSANDBOX_MAX_TIMEOUT_S?")


def test_gunicorn_does_not_start_with_a_wrong_type():
    run = subprocess.run([str(Path(sys.executable).parent / "gunicorn"), "--config", "api/gunicorn.conf.py",
                          "--check-config", "api:create_app()"], cwd=REPO, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYSANDBOX_MAX_PIDS": "many"}, timeout=60)
    assert run.returncode != 0
    assert "PYSANDBOX_MAX_PIDS: Input should be a valid integer" in run.stdout + run.stderr
