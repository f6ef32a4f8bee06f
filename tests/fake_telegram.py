"""A small stand-in for the Telegram Bot API on 127.0.0.1, speaking the methods iconforge's bot
uses (getMe, getUpdates long polling, sendMessage, editMessageText, sendMediaGroup and sendDocument
with multipart uploads, answerCallbackQuery). It records every call, uploaded files as bytes."""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

USER = {"id": 1001, "is_bot": False, "first_name": "Ada"}
CHAT = {"id": 1001, "type": "private", "first_name": "Ada"}


@dataclass
class Call:
    method: str
    fields: dict  # form fields, JSON-decoded where they are JSON
    files: dict = field(default_factory=dict)  # multipart field name -> bytes


class FakeTelegram:
    def __init__(self, token: str):
        self.token = token
        self.calls: list[Call] = []
        self._updates: list[dict] = []
        self._new = asyncio.Condition()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)  # its URLs hold the token: the check is on the bot's logs
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()

    # --- what the test does ------------------------------------------------------------
    async def send_text(self, text: str) -> None:
        await self._push({"message": self._message(text, from_user=USER)})

    async def press(self, data: str, message_id: int) -> None:
        await self._push({"callback_query": {"id": str(next(self._ids)), "from": USER, "chat_instance": "1",
                                             "data": data, "message": self._message("…", message_id=message_id)}})

    async def wait_for(self, predicate, timeout_s: float = 60.0) -> Call:
        """The first recorded call (from the start) for which predicate(call) holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hit = next((c for c in self.calls if predicate(c)), None)
            if hit:
                return hit
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching call in {timeout_s} s; calls: {[(c.method, c.fields) for c in self.calls]}")

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # --- the server ------------------------------------------------------------------------
    async def _push(self, update: dict) -> None:
        async with self._new:
            self._updates.append({"update_id": len(self._updates) + 1, **update})
            self._new.notify_all()

    def _message(self, text: str, from_user: dict | None = None, message_id: int | None = None, **extra) -> dict:
        m = {"message_id": message_id or next(self._ids), "date": int(time.time()), "chat": CHAT, **extra}
        if text:
            m["text"] = text
        if from_user:
            m["from"] = from_user
        return m

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"].lower()
        form = await request.post()
        fields, files = {}, {}
        for name, value in form.items():
            if isinstance(value, web.FileField):
                files[name] = value.file.read()
            else:
                try:
                    fields[name] = json.loads(value)
                except ValueError:
                    fields[name] = value
        if method == "getupdates":
            return web.json_response({"ok": True, "result": await self._get_updates(fields)})
        self.calls.append(Call(method, fields, files))
        return web.json_response({"ok": True, "result": self._result(method, fields)})

    async def _get_updates(self, fields: dict) -> list[dict]:
        offset = int(fields.get("offset", 0) or 0)
        async with self._new:
            pending = [u for u in self._updates if u["update_id"] >= offset]
            if not pending:
                try:
                    await asyncio.wait_for(self._new.wait(), timeout=min(float(fields.get("timeout", 1) or 1), 1.0))
                except asyncio.TimeoutError:
                    pass
                pending = [u for u in self._updates if u["update_id"] >= offset]
        return pending

    def _result(self, method: str, f: dict):
        if method == "getme":
            return {"id": 42, "is_bot": True, "first_name": "iconforge", "username": "iconforge_test_bot"}
        if method in ("sendmessage", "editmessagetext"):
            return self._message(str(f.get("text", "")), message_id=f.get("message_id"),
                                 **({"reply_markup": f["reply_markup"]} if "reply_markup" in f else {}))
        if method == "sendmediagroup":
            return [self._message("", photo=[{"file_id": f"p{i}", "file_unique_id": f"p{i}", "width": 64,
                                              "height": 64}], caption=m.get("caption"))
                    for i, m in enumerate(f["media"])]
        if method == "senddocument":
            return self._message("", document={"file_id": "d", "file_unique_id": "d"}, caption=f.get("caption"))
        return True  # answerCallbackQuery, deleteWebhook, sendChatAction, ...
