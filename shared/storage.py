"""The storage budget: the bytes each client's jobs keep in Redis, shared by the API (which
reserves them at admission) and the workers (which settle them when they take and end a job).

A job holds, from its admission until its data leaves Redis:
  - reserved: its input (the pickled payload the worker reads, `payload_key`), the largest result
    its limits allow (`worst_result_bytes`) and JOB_OVERHEAD_BYTES;
  - taken: the worker took (and deleted) the input: the worst result and the overhead;
  - done: what RQ actually stored (`stored_result_bytes`) and the overhead; a job that failed
    without a result, or was canceled before it ran, the overhead alone.
It is released once its RQ record is gone (the result TTL expired, or it was deleted).

The ledger lives in Redis, changed only by Lua scripts (one round trip, atomic across API
processes and replicas): per job "bytes stage client" in JOBS, the sums per client in CLIENTS
and in all in TOTAL, and in DUE when each job is next looked at. An entry comes due
RECHECK_S after each change, then when its RQ record would expire: a due job whose record is
gone is released (with its payload, should one be left); one that failed or was canceled
without having been settled, or whose worker died (taken, still `started` in RQ, and no
liveness key: RQ itself notices only at its next maintenance, minutes later), is settled to
the overhead; any other is looked at again later.
The scripts touch keys they do not declare (the job's RQ record): fine on one Redis (or
Memorystore), not on Redis Cluster, which this service does not use.

Hand-rolled: neither RQ nor redis-py keeps byte budgets; this is three short Lua scripts.
"""
import math
from dataclasses import dataclass

from redis import Redis
from rq.job import Job
from rq.serializers import DefaultSerializer

from jail import Limits
from shared.queue import alive_key

PREFIX = "pysandbox:storage:"
TOTAL, CLIENTS, JOBS, DUE = (PREFIX + name for name in ("total", "clients", "jobs", "due"))
PAYLOAD_PREFIX = "pysandbox:payload:"
RECHECK_S = 60
"""An entry whose RQ record has no expiry yet (queued, running) is looked at this often."""
PRUNE_BATCH = 100
"""At most this many due entries are looked at per script call (each call then does a bounded
amount of work; the rest wait for the next call)."""
JOB_OVERHEAD_BYTES = 16 * 1024
"""What a job keeps in Redis besides its input and result, with room: its RQ hash (meta,
timestamps, a reference as its only argument), its registry and result-stream entries, this
ledger's entries, its keys while it runs. Measured at about 5 KiB in Redis's MEMORY USAGE
(tests/service/test_storage.py checks it stays under)."""
MAX_MESSAGE_BYTES = 4 * 2_000
MAX_TRACEBACK_BYTES = 4 * 64_000
"""An error's message and traceback, at most (jail/protocol.py) 2 000 and 64 000 characters of
up to 4 bytes of UTF-8 each."""
MAX_NAME_BYTES = 4 * 1024
"""An out/ file's name: at most 1 024 characters (jail/runinput.py) of up to 4 bytes each."""
VALUE_HEADER_BYTES = 16
"""What Redis keeps with a string's bytes (its sds header and terminator) or a stream entry's."""
FILE_FRAME_BYTES = 256
FRAME_BYTES = 1024
"""Pickle's framing of one file's dict (its keys, media type, size), and of the whole outcome."""


def payload_key(job_id: str) -> str:
    """The Redis key of a job's input, which its worker reads and deletes."""
    return PAYLOAD_PREFIX + job_id


def allocated(nbytes: int) -> int:
    """The memory Redis counts for a value of nbytes (used_memory, MEMORY USAGE): the value and
    its header (VALUE_HEADER_BYTES) rounded up to jemalloc's size class, four per doubling, so
    up to a quarter more than nbytes (14.9 MB takes 16 MiB)."""
    nbytes += VALUE_HEADER_BYTES
    spacing = 2 ** max(4, nbytes.bit_length() - 3)
    return -(-nbytes // spacing) * spacing


def worst_result_bytes(limits: Limits) -> int:
    """The most RQ can store for a job with these limits, as Redis counts it: the Outcome's
    dict pickled (RQ's DefaultSerializer), then base64 (rq.results.Result.serialize). Measured by
    tests/service/test_storage.py against outcomes built to be as large as the caps allow:
      - main()'s JSON of n bytes pickles to at most 9n/4 (`1e1,`, 4 bytes, is a 9-byte BINFLOAT);
      - stdout + stderr of n bytes decode (errors="replace") to at most 3n bytes of UTF-8;
      - files out of n bytes are 4n/3 of base64 (and a padding per file), with their names."""
    result = 9 * limits.max_result_bytes // 4 + limits.max_result_bytes // 256
    output = 3 * limits.max_output_bytes
    files = (4 * math.ceil(limits.max_files_out_bytes / 3)
             + limits.max_files_out * (4 + MAX_NAME_BYTES + FILE_FRAME_BYTES))
    pickled = result + output + files + MAX_MESSAGE_BYTES + MAX_TRACEBACK_BYTES + FRAME_BYTES
    return allocated(4 * math.ceil(pickled / 3))


def stored_result_bytes(value: object) -> int:
    """What RQ stores of a job's return value (its pickle in base64), as Redis counts it."""
    return allocated(4 * math.ceil(len(DefaultSerializer.dumps(value)) / 3))


_COMMON = """
local TOTAL, CLIENTS, JOBS, DUE = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function now() return tonumber(redis.call('TIME')[1]) end
local function entry(id)
  local raw = redis.call('HGET', JOBS, id)
  if not raw then return nil end
  local bytes, stage, client = string.match(raw, '^(%d+) (%a) (.*)$')
  return tonumber(bytes), stage, client
end
local function add(client, delta)
  redis.call('INCRBY', TOTAL, delta)
  if redis.call('HINCRBY', CLIENTS, client, delta) <= 0 then redis.call('HDEL', CLIENTS, client) end
end
local function set(id, client, old, new, stage)
  if new ~= old then add(client, new - old) end
  redis.call('HSET', JOBS, id, string.format('%d %s %s', new, stage, client))
end
local function drop(id, payload_prefix)
  local bytes, stage, client = entry(id)
  if bytes then
    add(client, -bytes)
    redis.call('HDEL', JOBS, id)
  end
  redis.call('ZREM', DUE, id)
  redis.call('DEL', payload_prefix .. id)
end
-- ARGV[1..4] of every script: job key prefix, payload key prefix, overhead, recheck seconds
local function prune(t)
  local due = redis.call('ZRANGEBYSCORE', DUE, '-inf', t, 'LIMIT', 0, PRUNE_BATCH)
  for _, id in ipairs(due) do
    local key = ARGV[1] .. id
    local status = redis.call('HGET', key, 'status')
    if not status then
      drop(id, ARGV[2])
    else
      local bytes, stage, client = entry(id)
      local ended = status == 'failed' or status == 'canceled' or status == 'stopped'
      local lost = status == 'started' and stage == 't' and redis.call('EXISTS', ALIVE_PREFIX .. id) == 0
      if bytes and stage ~= 'd' and (ended or lost) then
        set(id, client, bytes, tonumber(ARGV[3]), 'd')
      end
      local ttl = redis.call('TTL', key)
      redis.call('ZADD', DUE, t + (ttl > 0 and ttl + 1 or tonumber(ARGV[4])), id)
    end
  end
end
""".replace("PRUNE_BATCH", str(PRUNE_BATCH)).replace("ALIVE_PREFIX", repr(alive_key("")))

_RESERVE = _COMMON + """
-- ARGV[5..]: job id, client, bytes, the client's budget, the total budget
local t = now()
prune(t)
local id, client, bytes = ARGV[5], ARGV[6], tonumber(ARGV[7])
local total = tonumber(redis.call('GET', TOTAL) or '0')
local mine = tonumber(redis.call('HGET', CLIENTS, client) or '0')
if mine + bytes > tonumber(ARGV[8]) then return {1, mine, total} end
if total + bytes > tonumber(ARGV[9]) then return {2, mine, total} end
set(id, client, 0, bytes, 'r')
redis.call('ZADD', DUE, t + tonumber(ARGV[4]), id)
return {0, mine + bytes, total + bytes}
"""

_SETTLE = _COMMON + """
-- ARGV[5..]: job id, bytes, stage ('t' taken, 'd' done; '-' releases the job at once)
local id = ARGV[5]
if ARGV[7] == '-' then drop(id, ARGV[2]) return 1 end
local bytes, stage, client = entry(id)
if not bytes then return 0 end
set(id, client, bytes, tonumber(ARGV[6]), ARGV[7])
redis.call('ZADD', DUE, now() + tonumber(ARGV[4]), id)
return 1
"""

_HELD = _COMMON + """
prune(now())
return {redis.call('GET', TOTAL) or '0', redis.call('HGETALL', CLIENTS)}
"""


@dataclass(frozen=True)
class Refusal:
    """Why a reservation was refused: over the client's budget (else the total's), with what
    the client and everyone held then."""

    client_full: bool
    client_held: int
    total_held: int


class Ledger:
    """The storage budget's ledger in Redis (see the module's docstring)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._held = redis.register_script(_HELD)

    def _args(self) -> list[str | int]:
        return [Job.redis_job_namespace_prefix, PAYLOAD_PREFIX, JOB_OVERHEAD_BYTES, RECHECK_S]

    def reserve(self, job_id: str, client: str, nbytes: int, client_budget: int,
                total_budget: int) -> Refusal | None:
        """Reserve nbytes for a new job of client's, unless that would take the client or
        everyone over its budget: then the Refusal, and nothing is reserved."""
        refused, mine, total = self._reserve(
            keys=[TOTAL, CLIENTS, JOBS, DUE],
            args=[*self._args(), job_id, client, nbytes, client_budget, total_budget])
        return None if refused == 0 else Refusal(refused == 1, int(mine), int(total))

    def settle(self, job_id: str, nbytes: int, done: bool) -> None:
        """The job now holds nbytes: taken by a worker (its input dropped), or done (its result
        stored). A job the ledger does not hold (queued before it existed) is left alone."""
        self._settle(keys=[TOTAL, CLIENTS, JOBS, DUE],
                     args=[*self._args(), job_id, nbytes, "d" if done else "t"])

    def release(self, job_id: str) -> None:
        """Forget the job and delete its payload: it was never enqueued."""
        self._settle(keys=[TOTAL, CLIENTS, JOBS, DUE], args=[*self._args(), job_id, 0, "-"])

    def held(self) -> tuple[int, dict[str, int]]:
        """The bytes held in all and per client, after releasing what is due."""
        total, flat = self._held(keys=[TOTAL, CLIENTS, JOBS, DUE], args=self._args())
        return int(total), {client.decode(): int(held)
                            for client, held in zip(flat[::2], flat[1::2], strict=True)}
