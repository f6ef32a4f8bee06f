"""The Telegram bot (aiogram 3), a thin client of the HTTP API: `python -m iconforge.serve.bot`.

Any text is a prompt. The bot answers with a status message that it edits with the queue position
and progress, then an album of the images captioned with their seeds, and an inline button that
sends the SVGs as documents. One active job and one prompt per `min_interval_s` per user.

Environment: TELEGRAM_BOT_TOKEN (required; never logged), TELEGRAM_API_URL (optional: a local
Bot API server), ICONFORGE_API_URL / ICONFORGE_API_KEY (the generation API, as for the client).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from dataclasses import dataclass

from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandStart
from aiogram.types import (BufferedInputFile, CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup,
                           InputMediaPhoto, Message)

from iconforge.serve.client import FINISHED, JOB_ID_PATTERN, ApiError, Client

TOKEN_ENV, SERVER_ENV = "TELEGRAM_BOT_TOKEN", "TELEGRAM_API_URL"
SVG_PREFIX = "svg:"
HELP = ("Send me a description, e.g. <i>zebrafish embryo</i>, and I draw icons in the bioicons style.\n"
        "Each image comes with its seed; the button under them sends the SVG versions.\n"
        "/help shows this message.")
log = logging.getLogger("iconforge.bot")


@dataclass(frozen=True)
class BotConfig:
    images: int = 4  # images per prompt
    min_interval_s: float = 10.0  # rate limit: at most one prompt per user in this many seconds
    poll_s: float = 0.5  # how often the status message is refreshed


def status_text(view: dict) -> str:
    if view["status"] == "queued":
        return f"Queued, position {view['position']}…"
    if view["status"] == "running":
        return f"Drawing: {round(100 * view['progress'])}% (step {view['steps_done']} of {view['steps_total']})"
    if view["status"] == "done":
        return f"Done: {len(view['images'])} image(s) for “{view['settings']['prompt_sent']}”."
    return f"Job {view['status']}" + (f": {view['error']}" if view.get("error") else ".")


def build_router(api: Client, cfg: BotConfig) -> Router:
    router = Router(name="iconforge")
    active: dict[int, str] = {}  # user id -> their job in progress
    last_prompt: dict[int, float] = {}  # user id -> monotonic time of their last accepted prompt

    @router.message(CommandStart())
    @router.message(Command("help"))
    async def help_(message: Message) -> None:
        await message.answer(HELP, parse_mode="HTML")

    @router.message(F.text & ~F.text.startswith("/"))
    async def prompt(message: Message) -> None:
        user = message.from_user.id if message.from_user else message.chat.id
        if user in active:
            await message.answer("One job at a time: wait for your current images first.")
            return
        wait = last_prompt.get(user, -1e9) + cfg.min_interval_s - time.monotonic()
        if wait > 0:
            await message.answer(f"Too fast: send your next prompt in {wait:.0f} s.")
            return
        last_prompt[user] = time.monotonic()
        active[user] = ""  # taken before the first await: this user's next message sees it
        try:
            status = await message.answer("Submitting…")
            try:
                job = await asyncio.to_thread(api.submit, {"prompt": message.text, "n": cfg.images}, f"tg:{user}")
            except ApiError as e:
                await status.edit_text(f"Not accepted: {e.message}")
                return
            active[user] = job["id"]
            view = await _follow(api, cfg, job["id"], status)
            if view["status"] == "done":
                await _send_album(api, message, view)
        finally:
            del active[user]

    @router.callback_query(F.data.startswith(SVG_PREFIX))
    async def svgs(query: CallbackQuery) -> None:
        job_id = query.data.removeprefix(SVG_PREFIX)
        if not re.match(JOB_ID_PATTERN, job_id) or query.message is None:
            await query.answer("Unknown job.")
            return
        try:
            view = await asyncio.to_thread(api.job, job_id)
            files = [(im["seed"], await asyncio.to_thread(api.svg, job_id, im["index"])) for im in view["images"]]
        except ApiError as e:
            await query.answer(f"Not available any more ({e.message})"[:200], show_alert=True)
            return
        await query.answer()
        for seed, svg in files:
            await query.message.answer_document(BufferedInputFile(svg.encode("utf-8"), f"iconforge-{seed}.svg"),
                                                caption=f"seed {seed}")

    return router


async def _follow(api: Client, cfg: BotConfig, job_id: str, status: Message) -> dict:
    """Poll the job, editing the status message whenever its text changes. Short polls, not the API's
    long polls: each would hold one of asyncio's few to_thread workers for a whole user's wait."""
    shown = status.text
    while True:
        try:
            view = await asyncio.to_thread(api.job, job_id)
        except ApiError as e:
            await status.edit_text(f"Lost the job: {e.message}")
            return {"status": "failed"}
        text = status_text(view)
        if text != shown:
            try:
                await status.edit_text(text)
            except TelegramBadRequest:  # e.g. the user deleted the status message: keep drawing
                pass
            shown = text
        if view["status"] in FINISHED:
            return view
        await asyncio.sleep(cfg.poll_s)


async def _send_album(api: Client, message: Message, view: dict) -> None:
    job_id = view["id"]
    media = [InputMediaPhoto(media=BufferedInputFile(await asyncio.to_thread(api.png, job_id, im["index"]),
                                                     f"iconforge-{im['seed']}.png"), caption=f"seed {im['seed']}")
             for im in view["images"]]
    await message.answer_media_group(media)
    button = InlineKeyboardButton(text="Send SVG files", callback_data=f"{SVG_PREFIX}{job_id}")
    await message.answer("Vector versions:", reply_markup=InlineKeyboardMarkup(inline_keyboard=[[button]]))


def make_bot(token: str, server_url: str | None = None) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(server_url)) if server_url else None
    return Bot(token, session=session)


def make_dispatcher(api: Client, cfg: BotConfig) -> Dispatcher:
    dp = Dispatcher()
    dp.include_router(build_router(api, cfg))
    return dp


def main() -> None:
    token = os.environ.get(TOKEN_ENV)
    if not token:
        sys.exit(f"bot: {TOKEN_ENV} is not set (the token @BotFather gave you)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    api = Client.from_env()
    try:
        api.health()
    except ApiError as e:
        sys.exit(f"bot: {e.message}")
    bot = make_bot(token, os.environ.get(SERVER_ENV) or None)
    asyncio.run(make_dispatcher(api, BotConfig()).start_polling(bot))


if __name__ == "__main__":
    main()
