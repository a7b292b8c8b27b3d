"""The Chainlit app of the roundtable page: Chainlit's hooks, each handing over to the bridge.

Chainlit imports this file itself (by path), after `roundtable ui` has connected the
worker and installed the bridge, which carries the settings.
"""

from __future__ import annotations

import hmac

import chainlit as cl
from chainlit.context import context
from chainlit.data.base import BaseDataLayer
from chainlit.session import WebsocketSession
from chainlit.types import ThreadDict
from starlette.datastructures import Headers

from roundtable.ui.bridge import APPROVE_ACTION, DENY_ACTION, REDRAW_PANEL, STOP_ACTION, current
from roundtable.ui.datalayer import HistoryStore
from roundtable.ui.rooms import LOCAL_USER, person_name

bridge = current()
settings = bridge.settings


def _session() -> WebsocketSession:
    session = context.session
    if not isinstance(session, WebsocketSession):
        raise RuntimeError("the roundtable page talks to browsers over websockets only")
    return session


@cl.data_layer
def _history() -> BaseDataLayer:
    return HistoryStore(settings.database_url)


if settings.auth:

    @cl.password_auth_callback
    async def _sign_in(username: str, password: str) -> cl.User | None:
        expected = settings.users.get(username)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return None
        return cl.User(identifier=username, metadata={"provider": "password"})

else:

    @cl.header_auth_callback
    async def _local(headers: Headers) -> cl.User | None:
        # Chainlit keeps history only for a signed-in user; with auth off, each person is the name
        # they gave the page once (kept in a cookie by roundtable.js), or the one local user.
        name = person_name(headers.get("cookie")) or LOCAL_USER
        if name in settings.reserved:  # no one speaks as an agent, or as the page itself
            name = LOCAL_USER
        return cl.User(identifier=name, metadata={"provider": "local"})


@cl.on_chat_start
async def _opened() -> None:
    await bridge.opened(_session())


@cl.on_chat_resume
async def _resumed(thread: ThreadDict) -> None:
    await bridge.resumed(_session(), thread)


@cl.on_message
async def _typed(message: cl.Message) -> None:
    await bridge.typed(_session(), message)


@cl.on_stop
async def _stop_pressed() -> None:
    await bridge.stop(_session())


@cl.action_callback(STOP_ACTION)
async def _stop_clicked(action: cl.Action) -> None:
    await bridge.stop(_session())


@cl.action_callback(APPROVE_ACTION)
async def _approve_clicked(action: cl.Action) -> None:
    await bridge.answer(_session(), action, approved=True)


@cl.action_callback(DENY_ACTION)
async def _deny_clicked(action: cl.Action) -> None:
    await bridge.answer(_session(), action, approved=False)


@cl.on_window_message
async def _page_said(message: str) -> None:
    if message == REDRAW_PANEL:  # from roundtable.js; anything else posted to the window is not ours
        await bridge.redraw_panel(_session())


@cl.on_chat_end
async def _closed() -> None:
    await bridge.closed(_session())
