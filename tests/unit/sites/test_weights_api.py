"""The weights endpoint's handling of a download whose client stops reading (red team,
issue 18): the stalled connection keeps the researcher's transfer slot until the client
goes, so a researcher cannot pile such connections up, and it is cut off in time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sites.runtime import weights_api
from sites.runtime.weights_api import MAX_ACTIVE, Caller, WeightsAPI

DIGEST, PLAN = "d" * 64, "a" * 64


class _Config:
    class transfer:  # noqa: N801 - the shape of SiteConfig.transfer
        idle_timeout_s = 0.2


class _Site:
    config = _Config


def _api(tmp_path: Path) -> WeightsAPI:
    release = tmp_path / "release.safetensors"
    release.write_bytes(b"\0" * (4 * weights_api.CHUNK))
    api = WeightsAPI(tmp_path)
    api.authenticate = lambda *a: Caller("ada@x.org", "k" * 64, "n" * 32)  # type: ignore
    api.release_file = lambda *a: release  # type: ignore[method-assign]
    api.site = lambda: _Site  # type: ignore[method-assign]
    return api


def test_a_download_never_read_holds_its_slot_until_the_client_goes(tmp_path):
    api = _api(tmp_path)
    path = f"{weights_api.transfer.PREFIX}/releases/{PLAN}/1/{DIGEST}"
    scope = {"type": "http", "path": path, "method": "GET", "headers": []}
    gone = asyncio.Event()
    sent: list[dict] = []

    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the client's buffer is full: never drains

    async def scenario() -> None:
        task = asyncio.create_task(api(scope, receive, send))
        await asyncio.sleep(0.6)  # past the idle timeout: the send was given up
        assert sent[0]["status"] == 200 and len(sent) == 2  # the head and one chunk
        assert api._active == {"ada@x.org": 1} and not task.done()  # the slot is held
        gone.set()  # the client closes its end
        await asyncio.wait_for(task, 5)
        assert api._active == {}

    asyncio.run(scenario())


def test_a_researcher_with_every_slot_taken_is_told_to_wait(tmp_path):
    api = _api(tmp_path)
    path = f"{weights_api.transfer.PREFIX}/releases/{PLAN}/1/{DIGEST}"
    scope = {"type": "http", "path": path, "method": "GET", "headers": []}
    api._active["ada@x.org"] = MAX_ACTIVE
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(api(scope, receive, send))
    assert sent[0]["status"] == 503 and b'"busy"' in sent[1]["body"]
