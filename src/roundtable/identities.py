"""Per-process identities: who may register, subscribe and publish what on the host.

`roundtable certs DIR --agents writer,editor` writes one token per identity (each agent, the
manager, the page, and terminal clients) into DIR/tokens/, and DIR/identities.yaml for the host:
each identity's name, role and the SHA-256 of its token (no secret). The host, given that file,
knows every caller by its token and lets it do only what its role needs:

| role    | registers                    | subscribes to                       | publishes on                 |
|---------|------------------------------|-------------------------------------|------------------------------|
| agent   | its own name                 | turn.<name>, the seed topics        | control, stream, presence, seed |
| manager | the manager's two types      | control, presence                   | group_chat, turn.*, control  |
| page    | ui_*, terminal_*, status_*   | group_chat, stream, the seed topic, presence | control             |

An identity makes no direct calls (RPCs): none of our processes does. The sender of every event
it publishes is the authenticated one: an agent's events carry its own name whatever it claims.
On a NATS bus the same holds, through NATS's own users and permissions (natsbus.authorization):
identities.yaml also keeps each token's bcrypt hash, which NATS checks passwords against.

One shared token (ROUNDTABLE_TOKEN, or `token` from `roundtable certs` without --agents) stays as
the development shortcut: whoever holds it may act as any agent.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import NAME_PATTERN, ConfigError

Role = Literal["agent", "manager", "page"]
#: The identities every deployment has besides its agents, and their roles.
MANAGER_IDENTITY = "manager"
PAGE_IDENTITY = "ui"
CLIENT_IDENTITY = "client"  # `roundtable chat`, `status` and `up`'s terminal
FIXED_IDENTITIES: dict[str, Role] = {MANAGER_IDENTITY: "manager", PAGE_IDENTITY: "page", CLIENT_IDENTITY: "page"}
IDENTITIES_FILE = "identities.yaml"
BCRYPT_ROUNDS = 10  # each NATS connection checks its password once: about 50 ms of the server's CPU
TOKENS_DIR = "tokens"


def _matches(patterns: Iterable[str], name: str) -> bool:
    """`name` is one of `patterns`, or starts with a pattern's part before its trailing `*`."""
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


@dataclass(frozen=True)
class Grant:
    """What one identity may do on the host."""

    identity: str
    role: Role
    agent_types: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    sender: str | None  # the sender its events carry when it claims none, or one not its own

    def may_register(self, agent_type: str) -> bool:
        return _matches(self.agent_types, agent_type)

    def may_subscribe(self, topic_type: str, prefix: bool = False, agent_type: str = "") -> bool:
        if prefix:
            # AutoGen subscribes every agent type to "<type>:" for messages sent to it directly.
            # Any other prefix covers topic types no one has named yet: only a pattern covers it.
            if topic_type == f"{agent_type}:":
                return True
            return any(p.endswith("*") and topic_type.startswith(p[:-1]) for p in self.subscribe)
        return _matches(self.subscribe, topic_type)

    def may_publish(self, topic_type: str) -> bool:
        return _matches(self.publish, topic_type)


def grant(identity: str, role: Role) -> Grant:
    # Imported here: the host needs them only with per-identity tokens, and they bring AgentChat.
    from .messages import (
        CONTROL,
        GROUP_CHAT,
        MANAGER_TYPE,
        PRESENCE,
        PRESENCE_TYPE,
        SEED_HELLO,
        SEED_TOPIC,
        STREAM,
        TURN_PREFIX,
        turn_topic_type,
    )

    if role == "agent":
        return Grant(
            identity,
            role,
            agent_types=(identity,),
            subscribe=(turn_topic_type(identity), SEED_TOPIC, SEED_HELLO),
            publish=(CONTROL, STREAM, PRESENCE, SEED_TOPIC, SEED_HELLO),
            sender=identity,
        )
    if role == "manager":
        return Grant(
            identity,
            role,
            agent_types=(MANAGER_TYPE, PRESENCE_TYPE),
            subscribe=(CONTROL, PRESENCE),
            publish=(GROUP_CHAT, f"{TURN_PREFIX}*", CONTROL),
            sender=MANAGER_TYPE,
        )
    return Grant(
        identity,
        role,
        agent_types=("ui_*", "terminal_*", "status_*"),  # `roundtable status` listens to heartbeats on a bus
        subscribe=(GROUP_CHAT, STREAM, SEED_TOPIC, PRESENCE),
        publish=(CONTROL,),
        sender=None,
    )


class Identity(BaseModel):
    """One entry of identities.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    role: Role
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: The token's bcrypt hash, for a NATS bus's per-user passwords (NATS takes bcrypt, not SHA-256).
    nats_bcrypt: str | None = Field(default=None, pattern=r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


class _IdentitiesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identities: list[Identity] = Field(min_length=1)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authority:
    """The host's view: a presented token -> the identity's grant. `None` means no limits: the
    shared development token, or no token configured at all."""

    def __init__(self, grants: Mapping[bytes, Grant], shared_token: str | None = None) -> None:
        self._grants = dict(grants)
        self._shared = token_digest(shared_token) if shared_token else None

    @property
    def checks_tokens(self) -> bool:
        return bool(self._grants) or self._shared is not None

    @property
    def per_identity(self) -> bool:
        return bool(self._grants)

    def admits(self, authorization: str) -> bool:
        return self.lookup(authorization) is not False

    def lookup(self, authorization: str) -> Grant | Literal[False] | None:
        """The grant for a presented `authorization` header value; None for full access; False
        for a token that is not known (or missing, when tokens are checked)."""
        if not self.checks_tokens:
            return None
        token = authorization.removeprefix("Bearer ")
        if not authorization.startswith("Bearer ") or not token:
            return False
        digest = token_digest(token)
        if self._shared is not None and hmac.compare_digest(digest, self._shared):
            return None
        found = self._grants.get(digest)
        return found if found is not None else False


def load_identities(path: str) -> list[Identity]:
    """The entries of an identities file, checked (ConfigError naming what is wrong)."""
    try:
        raw = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read the identities file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"the identities file {path} is not YAML: {str(error).splitlines()[0]}") from None
    try:
        parsed = _IdentitiesFile.model_validate(raw)
    except ValidationError as error:
        detail = error.errors()[0]
        where = ".".join(str(p) for p in detail["loc"])
        raise ConfigError(f"the identities file {path}: {where}: {detail['msg']}") from None
    names: set[str] = set()
    for entry in parsed.identities:
        if entry.name in names:
            raise ConfigError(f"the identities file {path} names {entry.name!r} twice")
        names.add(entry.name)
    return parsed.identities


def load_authority(path: str | None, shared_token: str | None) -> Authority:
    """The host's authority from an identities file (if given) and the shared token (if any)."""
    if path is None:
        return Authority({}, shared_token)
    grants = {bytes.fromhex(e.token_sha256): grant(e.name, e.role) for e in load_identities(path)}
    return Authority(grants, shared_token)


def role_of(identity: str) -> Role:
    """An identity's role by its name: the fixed ones', else an agent's (see write_identities)."""
    return FIXED_IDENTITIES.get(identity, "agent")


def password_hash(token: str) -> str:
    """What a NATS server keeps of a password (or token): its bcrypt hash."""
    import bcrypt

    return bcrypt.hashpw(token.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()


def token_path(directory: str, identity: str) -> Path:
    return Path(directory).expanduser() / TOKENS_DIR / f"{identity}.token"


def write_identities(directory: Path, agents: Iterable[str]) -> list[Path]:
    """A token for each agent, the manager, the page and terminal clients (DIR/tokens/NAME.token,
    readable by this user only), and DIR/identities.yaml, which the host reads."""
    roles: dict[str, Role] = {name: "agent" for name in agents}
    clash = sorted(set(roles) & set(FIXED_IDENTITIES))
    if clash:
        raise ConfigError(f"an agent may not be named {', '.join(map(repr, clash))}: that name is taken by a role")
    roles.update(FIXED_IDENTITIES)
    (directory / TOKENS_DIR).mkdir(parents=True, exist_ok=True)
    entries, written = [], []
    for name, role in roles.items():
        token = secrets.token_urlsafe(32)
        path = token_path(str(directory), name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(token + "\n")
        written.append(path)
        entries.append(
            {
                "name": name,
                "role": role,
                "token_sha256": token_digest(token).hex(),
                "nats_bcrypt": password_hash(token),
            }
        )
    listing = directory / IDENTITIES_FILE
    header = "# roundtable identities, for the host (security.identities). No secret here: token hashes only.\n"
    listing.write_text(header + yaml.safe_dump({"identities": entries}, sort_keys=False), encoding="utf-8")
    written.append(listing)
    return written
