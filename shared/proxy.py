"""What the image's nginx (docker/nginx.conf) takes from the service's settings.

    python -m shared.proxy     prints them as JSON (docker/supervise.py renders nginx's config with them)

Outside api/ on purpose: importing the app (Flask, the MCP SDK) costs ~2 s of CPU here and took
minutes in the cgroup v2 VM tier (qemu without KVM) beside a starting service; this needs only
the settings.
"""
import json
import math

from shared.settings import Settings, load

UPSTREAM_MARGIN_S = 30
"""Beyond a run's longest wait and time: starting its jail, and carrying its answer."""


def proxy_settings(settings: Settings) -> dict[str, int]:
    """nginx's body cap (the app's own, so both refuse the same bodies) and how long it waits
    for gunicorn's answer: the longest sync run after the longest wait for a slot or a worker."""
    longest_s = math.ceil(settings.max_timeout_s + settings.queue_wait_s)
    return {"MAX_BODY_BYTES": settings.max_body_bytes(), "UPSTREAM_TIMEOUT_S": longest_s + UPSTREAM_MARGIN_S}


if __name__ == "__main__":
    print(json.dumps(proxy_settings(load())))
