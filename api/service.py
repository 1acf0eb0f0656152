"""What an app holds once made (create_app): its settings and the objects its requests use."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from api.job_queue import QueueUnavailable

if TYPE_CHECKING:  # these modules read the Service of their app
    from api.clients import Key
    from api.job_queue import JobQueue
    from api.mcp_endpoint import McpEndpoint
    from api.modes import RunMode
    from api.sessions import QueueSessions, Sessions
    from shared.settings import Settings

EXTENSION = "pysandbox"


@dataclass
class Service:
    """An app's state, in app.extensions[EXTENSION]."""

    settings: Settings
    keys: list[Key]
    mode: RunMode
    """Where sync runs run (api/modes.py)."""
    jobs: JobQueue | None
    """The queue, when REDIS_URL is set."""
    openapi: dict[str, Any] | None = None
    """The OpenAPI document, built at its first request."""
    mcp: McpEndpoint | None = None
    """/mcp's server (api/mcp_endpoint.py); its event loop starts at its first request."""
    sessions: Sessions | QueueSessions | None = None
    """The sessions this process holds, or routes to the workers (api/sessions.py)."""
    draining: threading.Event = field(default_factory=threading.Event)
    """Set once this process was told to stop (SIGTERM): /readyz answers 503 from then on."""

    def job_queue(self) -> JobQueue:
        """The queue, for ?async=1 (runs and session calls); 503 queue_unavailable without one."""
        if self.jobs is None:
            raise QueueUnavailable("async runs need a queue: set REDIS_URL")
        return self.jobs


def service(app: Flask | None = None) -> Service:
    """The Service of this app (default: the current one)."""
    found = (app or current_app).extensions[EXTENSION]
    assert isinstance(found, Service)
    return found
