"""Running the page: one Chainlit server and one AutoGen worker, in one process and one event loop.

Chainlit reads its settings from an app directory when it is first imported, so the
directory is made (in the data dir) and named before anything imports Chainlit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..httpserve import listen, serve_http
from ..wire import HostUnreachable
from ..worker import connect_worker, stop_worker
from .settings import PageSettings

log = logging.getLogger("roundtable.ui")

PACKAGE_DIR = Path(__file__).resolve().parent
APP_FILE = PACKAGE_DIR / "app.py"
SECRET_FILE = "ui_auth_secret"
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


# ---------------------------------------------------------------- the app directory


def prepare_app_root(root: Path, ask_name: bool = False) -> None:
    """Chainlit's config, the page's static files and the avatars dir, fresh from the package.
    Copied at every start so an upgrade takes effect; avatars drawn before are kept. With
    `ask_name` (sign-in off), the page asks each person's name once."""
    (root / ".chainlit").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PACKAGE_DIR / ".chainlit" / "config.toml", root / ".chainlit" / "config.toml")
    public = root / "public"
    (public / "avatars").mkdir(parents=True, exist_ok=True)
    for item in (PACKAGE_DIR / "public").iterdir():
        if item.is_file():
            shutil.copyfile(item, public / item.name)
    script = public / "roundtable.js"
    flag = f"window.roundtableAskName = {'true' if ask_name else 'false'};\n"
    script.write_text(flag + script.read_text("utf-8"), "utf-8")
    # The page's own lines (who speaks next, the end) carry the roundtable mark.
    shutil.copyfile(PACKAGE_DIR / "public" / "favicon.svg", public / "avatars" / "roundtable.svg")
    # Chainlit shows this file as a readme when it has text; the page explains itself.
    (root / "chainlit.md").write_text("", encoding="utf-8")


def auth_secret(data_dir: Path) -> str:
    """The key that signs sign-in tokens: made once, kept readable by this user only."""
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        secret = path.read_text(encoding="utf-8").strip()
        if secret:
            return secret
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret)
    return secret


def _check_chainlit_not_loaded(root: Path) -> None:
    loaded = sys.modules.get("chainlit.config")
    if loaded is not None and Path(getattr(loaded, "APP_ROOT", "")).resolve() != root.resolve():
        raise RuntimeError("Chainlit was imported before the page set its app directory; serve_ui must come first")


# ---------------------------------------------------------------- serving


def _strip_external_links(html: str) -> str:
    """Chainlit's page links Google Fonts and a KaTeX stylesheet on a CDN. Both block rendering
    without a network, and neither is needed (system fonts; LaTeX is off): drop every external link."""
    return re.sub(r"<link\b[^>]*\bhref=\"(?:https?:)?//[^\"]*\"[^>]*>\s*", "", html)


@contextlib.contextmanager
def _quiet_chainlit() -> Iterator[None]:
    chainlit_log = logging.getLogger("chainlit")

    def keep(record: logging.LogRecord) -> bool:
        # We keep no files as elements (avatars are static), and the page has no readme to
        # translate: these warnings would only mislead.
        text = record.getMessage()
        return "storage client is not initialized" not in text and "Translated markdown file" not in text

    # Chainlit narrates its set-up at INFO (one line per translation file it copies); we say what matters.
    level = chainlit_log.level
    chainlit_log.setLevel(max(level, logging.WARNING))
    chainlit_log.addFilter(keep)
    try:
        yield
    finally:
        chainlit_log.removeFilter(keep)
        chainlit_log.setLevel(level)


def _load_app() -> Any:
    """Chainlit's ASGI app with ours loaded into it, headless and with nothing fetched from elsewhere."""
    from chainlit import server as chainlit_server
    from chainlit.auth import ensure_jwt_secret
    from chainlit.config import config as chainlit_config
    from chainlit.config import load_module

    original_template = chainlit_server.get_html_template

    def local_only_template(root_path: str) -> str:
        return _strip_external_links(original_template(root_path))  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated

    chainlit_server.get_html_template = local_only_template
    chainlit_config.run.headless = True
    chainlit_config.run.module_name = str(APP_FILE)
    load_module(str(APP_FILE))
    ensure_jwt_secret()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
    return chainlit_server.app


async def _serve(settings: PageSettings, sock: socket.socket) -> None:
    from chainlit.config import config as chainlit_config
    from chainlit.data import get_data_layer

    from ..messages import new_id
    from ..observer import register_observer
    from . import bridge
    from .datalayer import ensure_schema

    await ensure_schema(settings.database_url)
    runtime = await connect_worker(settings.host_address, settings.connect_timeout, settings.security)
    try:
        # One worker and one observer for the whole process; the bridge routes to the tabs.
        sink = bridge.Bridge(runtime, settings)
        runtime.on_reconnect(sink.catch_up)
        sink.spawn(sink.ask_when_quiet())
        bridge.install(sink)
        await register_observer(runtime, f"ui_{new_id()[:12]}", sink, seed=settings.seed)
        chainlit_config.run.host = settings.bind_host
        chainlit_config.run.port = settings.port
        await serve_http(_load_app(), sock, f"ui on http://{settings.bind_host}:{settings.port}")
        data_layer: Any = get_data_layer()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        if data_layer is not None:
            await data_layer.close()
    finally:
        await stop_worker(runtime)


def run(settings: PageSettings) -> int:
    """Serve the page until SIGINT or SIGTERM; the exit code says how it went."""
    try:
        prepare_app_root(settings.app_root, ask_name=not settings.auth)
        secret = auth_secret(settings.app_root.parent)
        # Chainlit reads both from the environment; an operator's own secret wins.
        os.environ.setdefault("CHAINLIT_AUTH_SECRET", secret)
        os.environ["CHAINLIT_APP_ROOT"] = str(settings.app_root)
        _check_chainlit_not_loaded(settings.app_root)
        sock = listen(settings.bind_host, settings.port, "the page")
    except OSError as error:
        return fail(f"cannot prepare the page's directory {settings.app_root}: {error}", EXIT_FAILED)
    except HostUnreachable as error:
        return fail(str(error), EXIT_FAILED)
    try:
        with _quiet_chainlit():
            asyncio.run(_serve(settings, sock))
    except HostUnreachable as error:
        return fail(str(error), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()
    return 0


def fail(message: str, code: int) -> int:
    print(f"roundtable: error: {message}", file=sys.stderr)
    return code
