"""Signed callbacks of queued runs: `POST /execute?async=1` with a `callback_url` is POSTed its job's
state when the job ends (docs/callbacks.md).

Who does what. The API checks the URL at submit (`Destinations.check`) and registers the
callback beside the job (`register`). Whoever sees the job end records the body to send
(`ended`: the worker that ran it, or the API for a job canceled before a worker took it), and
marks it due. A delivery loop in each worker process (`deliver_forever`) takes due callbacks
(one worker per attempt: taking is a ZREM only one can win), checks the host's addresses again
(DNS may have changed since the submit), connects to the checked address itself, and POSTs once,
with a short timeout and no redirect followed; a failure is retried with exponential backoff
until PYSANDBOX_CALLBACK_RETRY_S after the job ended. The callback's state (pending, delivered,
failed; attempts; the last error) is in GET /jobs/<id> as `callback`.

A job whose worker died saw no end of its own: the same loop sweeps for them every SWEEP_S, one
process at a time (`sweep_lost`), and makes their callbacks due with GET /jobs/<id>'s `worker_lost`.

Signature: `PySandbox-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, as
Stripe signs its webhooks; `PySandbox-Delivery: <id>`, the same on every attempt of a callback.
"""
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import BaseRegistry, FailedJobRegistry, StartedJobRegistry

from shared.answers import lost_job
from shared.queue import HOLDER_KEY, QUEUE_NAME, failed_lost, is_lost
from shared.settings import Settings

SIGNATURE_HEADER = "PySandbox-Signature"
DELIVERY_HEADER = "PySandbox-Delivery"
DUE_KEY = "pysandbox:callbacks:due"
"""A sorted set: job ids whose callback is due, scored by when (Unix time)."""
SWEEP_KEY = "pysandbox:callbacks:sweep"
"""Held (SET NX EX SWEEP_S) by the process that sweeps for lost jobs: one sweep per SWEEP_S in all."""
SWEEP_S = 5
POLL_S = 0.2
MAX_BACKOFF_S = 60.0
MAX_URL_CHARS = 2048
log = logging.getLogger(__name__)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CallbackRefused(ValueError):
    """A callback URL the operator's settings do not allow; the message says why."""


def callback_key(job_id: str) -> str:
    """The Redis hash of a job's callback."""
    return f"pysandbox:callback:{job_id}"


@dataclass(frozen=True)
class Destinations:
    """Where callbacks may go (PYSANDBOX_CALLBACK_HOSTS): host names, and networks (CIDRs) whose
    addresses are allowed even when private, loopback or link-local."""

    names: frozenset[str]
    networks: tuple[Network, ...]

    @classmethod
    def of(cls, settings: Settings) -> "Destinations | None":
        """The allowed destinations; None when callbacks are off. ValueError for a bad entry, or
        hosts without a secret."""
        entries = [entry.strip().lower() for entry in settings.callback_hosts.split(",") if entry.strip()]
        if not entries:
            return None
        if not settings.callback_secret:
            raise ValueError("PYSANDBOX_CALLBACK_HOSTS needs PYSANDBOX_CALLBACK_SECRET to sign callbacks")
        names, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def check(self, url: str) -> tuple[str, list[Address]]:
        """The URL's host and its addresses, each allowed; CallbackRefused naming why not."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_CHARS:
            raise CallbackRefused(f"callback_url must be an http or https URL of at most {MAX_URL_CHARS} "
                                  "characters")
        host = parts.hostname.rstrip(".")
        literal = _address(host)
        if host not in self.names and not (literal and self._listed(literal)):
            raise CallbackRefused(f"callbacks to {host!r} are not allowed (PYSANDBOX_CALLBACK_HOSTS)")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = {_address(str(info[4][0])) for info in infos}
        except (OSError, ValueError) as exc:
            raise CallbackRefused(f"{host!r} does not resolve ({exc})") from None
        addresses = sorted((a for a in found if a is not None), key=str)
        for address in addresses:
            if not (address.is_global or self._listed(address)):
                raise CallbackRefused(f"{host!r} resolves to {address}, a private, loopback, link-local "
                                      "or reserved address that PYSANDBOX_CALLBACK_HOSTS does not list")
        if not addresses:
            raise CallbackRefused(f"{host!r} does not resolve")
        return host, addresses

    def _listed(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The PySandbox-Signature header's value for this body at this time."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def register(redis: Redis, job_id: str, url: str, ttl_s: int) -> None:
    """Note a job's callback at submit: pending, with its delivery id."""
    key = callback_key(job_id)
    with redis.pipeline() as pipe:
        pipe.hset(key, mapping={"url": url, "delivery_id": str(uuid.uuid4()), "status": "pending",
                                "attempts": 0})
        pipe.expire(key, ttl_s)
        pipe.execute()


def ended(redis: Redis, job_id: str, body: dict[str, Any]) -> None:
    """The job ended in this state (GET /jobs/<id>'s JSON): its callback, if it has one, is due.
    Only the first end recorded counts: a callback is sent once."""
    key = callback_key(job_id)
    if redis.hexists(key, "url") and redis.hsetnx(key, "body", json.dumps(body)):
        now = time.time()
        redis.hset(key, "ended_at", now)
        redis.zadd(DUE_KEY, {job_id: now})


def _fields(redis: Redis, job_id: str) -> dict[str, str]:
    found: dict[bytes, bytes] = redis.hgetall(callback_key(job_id))  # type: ignore[assignment]
    return {name.decode(): value.decode() for name, value in found.items()}


def state(redis: Redis, job_id: str) -> dict[str, Any] | None:
    """The callback's state for GET /jobs/<id>; None when the job has none."""
    fields = _fields(redis, job_id)
    if "url" not in fields:
        return None
    return {"url": fields["url"], "delivery_id": fields["delivery_id"], "status": fields["status"],
            "attempts": int(fields["attempts"]), "last_error": fields.get("last_error")}


def _awaiting(redis: Redis, registry: BaseRegistry) -> list[str]:
    """The registry's jobs with a callback whose body is not recorded yet (nothing saw them end)."""
    ids = list(dict.fromkeys(registry.get_job_ids(cleanup=False)))  # RQ's workers clean it up
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(callback_key(job_id), ["url", "body"])
        found = pipe.execute()
    return [job_id for job_id, (url, body) in zip(ids, found, strict=True) if url and body is None]


def _lost(redis: Redis, registry: BaseRegistry, status: JobStatus,
          lost: Callable[[Job], bool]) -> list[Job]:
    """Those of _awaiting's jobs still in `status` that are `lost` (a session's call is left to its
    own path)."""
    found = []
    for job_id in _awaiting(redis, registry):
        try:
            job = Job.fetch(job_id, connection=redis)
        except NoSuchJobError:
            continue  # expired since it was listed
        if HOLDER_KEY not in job.meta and job.get_status(refresh=False) is status and lost(job):
            found.append(job)
    return found


def sweep_lost(redis: Redis) -> int:
    """Make due the callbacks of the jobs lost with their worker, with GET /jobs/<id>'s body: the
    started jobs found lost (is_lost), and those RQ failed as abandoned; how many."""
    lost = _lost(redis, StartedJobRegistry(QUEUE_NAME, connection=redis), JobStatus.STARTED,
                 lambda job: is_lost(redis, job))
    lost += _lost(redis, FailedJobRegistry(QUEUE_NAME, connection=redis), JobStatus.FAILED,
                  lambda job: failed_lost(job.exc_info))
    for job in lost:
        ended(redis, job.id, lost_job(job.id, job.meta.get("request_id"), job.worker_name))
        log.warning("callback due for a job lost with its worker", extra={"job_id": job.id})
    return len(lost)


class Deliverer:
    """Sends due callbacks (the delivery loop of a worker process)."""

    def __init__(self, redis: Redis, settings: Settings, destinations: Destinations) -> None:
        self.redis, self.settings, self.destinations = redis, settings, destinations
        self.http = httpx.Client(timeout=settings.callback_timeout_s, follow_redirects=False,
                                 trust_env=False)
        self.sweep_at = 0.0

    def sweep(self) -> None:
        """Every SWEEP_S, sweep_lost if no other process holds the sweep's lock."""
        if time.monotonic() < self.sweep_at:
            return
        self.sweep_at = time.monotonic() + SWEEP_S
        if not self.redis.set(SWEEP_KEY, 1, nx=True, ex=SWEEP_S):
            return
        try:
            sweep_lost(self.redis)
        except RedisError:
            raise
        except Exception:  # noqa: BLE001 - a job it cannot read must not end the delivery loop
            log.exception("callbacks: the sweep for lost jobs failed")

    def deliver_due(self) -> int:
        """One pass: send each due callback this process takes; how many it took."""
        taken = 0
        due: list[bytes] = self.redis.zrangebyscore(DUE_KEY, 0, time.time(), start=0, num=16)  # type: ignore[assignment]
        for member in due:
            if self.redis.zrem(DUE_KEY, member):  # only one process wins each attempt
                taken += 1
                self.attempt(member.decode())
        return taken

    def attempt(self, job_id: str) -> None:
        """POST the job's state once; record the result, and the next try or the failure."""
        key = callback_key(job_id)
        fields = _fields(self.redis, job_id)
        if "body" not in fields or fields["status"] != "pending":
            return
        attempts = self.redis.hincrby(key, "attempts", 1)
        error, final = self.post(fields["url"], fields["delivery_id"], fields["body"].encode())
        if error is None:
            self.redis.hset(key, mapping={"status": "delivered"})
            self.redis.hdel(key, "last_error")
            return
        delay = min(self.settings.callback_backoff_s * 2 ** (int(attempts) - 1), MAX_BACKOFF_S)
        next_at = time.time() + delay
        if final or next_at > float(fields["ended_at"]) + self.settings.callback_retry_s:
            self.redis.hset(key, mapping={"status": "failed", "last_error": error})
            log.warning("callback failed: %s", error, extra={"job_id": job_id})
            return
        self.redis.hset(key, "last_error", error)
        self.redis.zadd(DUE_KEY, {job_id: next_at})

    def post(self, url: str, delivery_id: str, body: bytes) -> tuple[str | None, bool]:
        """(None, _) once a 2xx answered; else (the error, whether retrying is pointless: a
        refused address, a redirect)."""
        try:
            host, addresses = self.destinations.check(url)
        except CallbackRefused as exc:
            return str(exc), True
        parts = urlsplit(url)
        address = addresses[0]
        netloc = f"[{address}]" if address.version == 6 else str(address)
        if parts.port:
            netloc += f":{parts.port}"
        # The connection goes to the address just checked, not to a second lookup of the name
        # (DNS rebinding); Host and TLS's server name stay the URL's.
        pinned = urlunsplit(parts._replace(netloc=netloc))
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "Host": parts.netloc.rpartition("@")[2],
                   "User-Agent": "PySandbox-Callback", DELIVERY_HEADER: delivery_id,
                   SIGNATURE_HEADER: signature(self.settings.callback_secret, timestamp, body)}
        try:
            response = self.http.post(pinned, content=body, headers=headers,
                                      extensions={"sni_hostname": host})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500], False
        if response.is_success:
            return None, False
        if response.is_redirect:
            return f"answered {response.status_code} (a redirect, never followed)", True
        return f"answered {response.status_code}", False


def deliver_forever(deliverer: Deliverer, stop: threading.Event) -> None:
    """Send due callbacks until `stop` is set; a Redis outage only pauses it."""
    while not stop.is_set():
        try:
            deliverer.sweep()
            if deliverer.deliver_due():
                continue
        except RedisError:
            log.warning("callbacks: Redis is away; retrying")
        stop.wait(POLL_S)


def start(redis: Redis, settings: Settings) -> threading.Event | None:
    """Start this process's delivery loop (a daemon thread) when callbacks are on; its stop event."""
    destinations = Destinations.of(settings)
    if destinations is None:
        return None
    stop = threading.Event()
    threading.Thread(target=deliver_forever, args=(Deliverer(redis, settings, destinations), stop),
                     name="callbacks", daemon=True).start()
    return stop

