"""/mcp through the image (`make image-plot`): the official MCP SDK's client, through the image's
nginx in front of gunicorn, runs a matplotlib plot and gets the PNG as MCP image content, and a
pandas script's result. The rest of /mcp: tests/service/test_mcp.py."""
import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from tests.image.test_plot import PLOT, PNG_MAGIC, serve
from tests.support.images import docker

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def plot_service(plot_image: str) -> Iterator[str]:
    """The plot image as `make run` serves it (nginx, gunicorn, embedded Redis), without workers."""
    container, base = serve(plot_image, "PYSANDBOX_WORKERS=0")
    yield base
    docker("rm", "-f", container, check=False)


def call(base: str, arguments: dict[str, Any]) -> types.CallToolResult:
    """run_python through a new MCP session on base/mcp."""
    async def scenario() -> types.CallToolResult:
        async with httpx2.AsyncClient(timeout=90) as http, \
                streamable_http_client(f"{base}/mcp", http_client=http) as (read, write, *_), \
                ClientSession(read, write) as session:
            await session.initialize()
            return await session.call_tool("run_python", arguments)

    return asyncio.run(scenario())


def test_a_plot_comes_back_as_image_content_through_nginx(plot_service: str) -> None:
    result = call(plot_service, {"script": PLOT, "input": {"x": [1, 2, 3, 4]}, "timeout": 20})
    assert result.is_error is False, result.content
    assert result.structured_content is not None
    assert result.structured_content["result"].lower() == "agg"
    [image] = [block for block in result.content if isinstance(block, types.ImageContent)]
    data = base64.b64decode(image.data)
    assert image.mime_type == "image/png" and data.startswith(PNG_MAGIC) and len(data) > 5000


def test_a_pandas_script_through_nginx(plot_service: str) -> None:
    script = "import pandas as pd\ndef main(input):\n    return int(pd.Series(input).sum())"
    result = call(plot_service, {"script": script, "input": [1, 2, 3]})
    assert result.is_error is False and result.structured_content is not None
    assert result.structured_content["result"] == 6
