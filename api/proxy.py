"""What the image's nginx (docker/nginx.conf) takes from the service's settings.

    python -m api.proxy     prints them as JSON (docker/supervise.py renders nginx's config with them)
"""
import json
import math
from typing import Any

from api import max_body_bytes
from shared.settings import load_config

UPSTREAM_MARGIN_S = 30
"""Beyond a run's longest wait and time: starting its jail, and carrying its answer."""


def proxy_settings(config: dict[str, Any]) -> dict[str, int]:
    """nginx's body cap (the app's own, so both refuse the same bodies) and how long it waits
    for gunicorn's answer: the longest sync run after the longest wait for a slot or a worker."""
    longest_s = math.ceil(config["MAX_TIMEOUT_S"] + config["QUEUE_WAIT_S"])
    return {"MAX_BODY_BYTES": max_body_bytes(config), "UPSTREAM_TIMEOUT_S": longest_s + UPSTREAM_MARGIN_S}


if __name__ == "__main__":
    print(json.dumps(proxy_settings(load_config(None))))
