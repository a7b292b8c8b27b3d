"""What the page process needs to know, from the config and the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..chat import START_TIMEOUT
from ..config import CONNECT_TIMEOUT, Config, ConfigError
from ..identities import PAGE_IDENTITY
from ..security import Security, load_security

#: Author of the page's own lines: who speaks next, how it ended. The stylesheet keeps them quiet.
STATUS_AUTHOR = "roundtable"


@dataclass(frozen=True)
class PageSettings:
    """Everything the Chainlit app needs to know; it reaches the app as a module-level object."""

    host_address: str
    bind_host: str
    port: int
    app_root: Path
    database_url: str
    seed: bool = False
    auth: bool = False
    users: dict[str, str] = field(default_factory=dict, repr=False)  # name -> password: never printed
    connect_timeout: float = CONNECT_TIMEOUT
    security: Security | None = None  # TLS and the host's token, as every worker has them
    start_timeout: float = START_TIMEOUT
    #: Names a person may not take: the agents' (but for human seats) and the page's own lines'.
    reserved: frozenset[str] = frozenset()
    stop: str = "anyone"  # who in a shared conversation may stop it: anyone, or the one who started it ("owner")


def page_settings(
    config: Config,
    host_address: str,
    port: int | None = None,
    host: str | None = None,
    seed: bool = False,
    security: Security | None = None,
) -> PageSettings:
    if config.ui.auth and not config.ui.users:
        raise ConfigError("ui.auth is on but ui.users is empty: add `ui.users: {name: password}` or turn auth off")
    reserved = frozenset({STATUS_AUTHOR, *(agent.name for agent in config.agents if not agent.human)})
    taken = sorted(reserved & set(config.ui.users))
    if taken:
        raise ConfigError(f"ui.users: {', '.join(taken)} is an agent's name; a person needs a name of their own")
    data = config.data_path
    return PageSettings(
        host_address=host_address,
        bind_host=host or config.ui.host,
        port=port or config.ui.port,
        app_root=data / "ui",
        database_url=config.ui.database or f"sqlite+aiosqlite:///{data / 'ui.db'}",
        seed=seed,
        auth=config.ui.auth,
        users=dict(config.ui.users),
        connect_timeout=config.host.connect_timeout,
        security=security or load_security(config.host.security, PAGE_IDENTITY),
        stop=config.ui.stop,
        reserved=reserved,
    )
