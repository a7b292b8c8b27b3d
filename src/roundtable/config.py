"""The YAML config as typed models, and the one place where defaults live.

`load_config` turns any problem into a `ConfigError` whose message names the
file, the field and what is wrong, in one line.
"""

from __future__ import annotations

import ipaddress
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

#: Seconds a process keeps trying to reach the host (or a store) before it says it cannot.
CONNECT_TIMEOUT = 10.0

PROVIDERS = ("local", "openai", "azure", "openai-compatible", "scripted")
STRATEGIES = ("round_robin", "random", "selector", "graph")
# Agent names become AutoGen agent types and AssistantAgent names, which must be identifiers.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
DEFAULT_HOST_ADDRESS = "127.0.0.1:50051"


class ConfigError(Exception):
    """Bad input from a config file or flags; the message is one line a person can act on."""


_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


NATS_SCHEMES = ("nats://", "tls://")


def address_problem(address: str) -> str | None:
    """Why `address` is not a usable HOST:PORT for gRPC, nor a NATS bus (nats://HOST:PORT,...),
    or None if it is."""
    if address.startswith(NATS_SCHEMES):
        servers = [s.strip() for s in address.split(",") if s.strip()]
        for server in servers:
            scheme = next((p for p in NATS_SCHEMES if server.startswith(p)), "")
            problem = _host_port_problem(server.removeprefix(scheme))
            if problem is not None:
                return f"NATS server {server!r}: {problem.replace('50051', '4222')}"
        return None if servers else "expected nats://HOST:PORT[,nats://HOST:PORT...]"
    return _host_port_problem(address)


def _host_port_problem(address: str) -> str | None:
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        return "expected HOST:PORT, e.g. 127.0.0.1:50051"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"the port {port!r} is not a number from 1 to 65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
        return None
    try:
        ipaddress.IPv4Address(host)
        return None
    except ValueError:
        pass
    if ":" in host:
        return "an IPv6 address needs brackets, e.g. [::1]:50051"
    if not _HOSTNAME.match(host):
        return f"{host!r} is not a host name or IP address"
    return None


def check_address(address: str, what: str) -> str:
    """`address`, or a ConfigError naming `what` (a flag or field) and the problem."""
    problem = address_problem(address)
    if problem is not None:
        raise ConfigError(f"{what} {address!r}: {problem}")
    return address


class StoreUnavailable(Exception):
    """The transcript store could not be reached or opened; the message says where and why.
    (Here rather than in store.py so that catching it does not import SQLAlchemy.)"""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Model):
    """How one agent (or the selector) reaches its model."""

    provider: str = "local"
    model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    azure_endpoint: str | None = None
    azure_deployment: str | None = None
    api_version: str = "2024-08-01-preview"
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    stop: list[str] | None = None
    repeat_penalty: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    # scripted provider only: replies cycled in order, a delay between streamed words,
    # and a JSONL file that records every input the model was given.
    script: list[str] | None = None
    token_delay: float = Field(default=0.0, ge=0)
    cpu_ms: float = Field(default=0.0, ge=0, le=60_000)  # scripted: CPU each reply costs (benchmarks)
    record: str | None = None

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDERS:
            raise ValueError(f"unknown provider {value!r} (expected one of: {', '.join(PROVIDERS)})")
        return value

    @model_validator(mode="after")
    def _provider_fields(self) -> ModelConfig:
        if self.provider == "openai-compatible" and not (self.base_url and self.model):
            raise ValueError("provider 'openai-compatible' needs both base_url and model")
        if self.provider == "azure" and not (self.azure_endpoint and self.azure_deployment):
            raise ValueError("provider 'azure' needs both azure_endpoint and azure_deployment")
        return self


class LocalModelConfig(_Model):
    """The embedded model server that `roundtable model` and `roundtable up` start."""

    model: str = "default"  # "default" (Qwen2.5-Coder-1.5B), "small" (SmolLM2-135M) or a GGUF path
    host: str = "127.0.0.1"
    port: int = Field(default=8765, gt=0, lt=65536)
    n_ctx: int = Field(default=4096, gt=0)
    n_threads: int | None = Field(default=None, gt=0)
    cache_dir: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


IMPORT_PATH = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"


class McpServerConfig(_Model):
    """An MCP server: started by stdio (`command`, `args`) or reached over streamable HTTP (`url`)."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=30.0, gt=0)  # seconds for one call

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (stdio) or url (streamable HTTP)")
        return self


class CodeConfig(_Model):
    """Python run by AutoGen's local command-line executor, in a working directory of the
    conversation's own under `work_dir` (default: ~/.cache/roundtable/work)."""

    timeout: float = Field(default=60.0, gt=0)  # seconds for one run
    work_dir: str | None = None


class BudgetConfig(_Model):
    """Limits on what an agent, or a whole conversation, may use. Tokens are the model's
    reported usage (prompt and completion); tool calls count every call recorded."""

    tokens: int | None = Field(default=None, gt=0)
    tool_calls: int | None = Field(default=None, ge=0)
    # When an agent reaches its limit: leave it out of the rest of the conversation (`skip`),
    # or end the conversation (`end`). A conversation's own limit always ends it.
    on_exceeded: Literal["skip", "end"] = "skip"


class ToolConfig(_Model):
    """One entry of `agents[].tools`: a Python function, the tools of an MCP server, or code execution."""

    function: str | None = Field(default=None, pattern=IMPORT_PATH)  # "mypkg.tools:search_orders"
    mcp: McpServerConfig | None = None
    code: CodeConfig | None = None
    # Whether a person approves each call first: every call (`always`), none (`never`), or the
    # calls of every tool not listed in `read_only` (`writes`).
    # Code execution asks by default; everything else does not.
    approval: Literal["always", "never", "writes"] | None = None
    read_only: list[str] = Field(default_factory=list)  # tool names that only read, for `writes`
    approval_timeout: float = Field(default=300.0, gt=0)  # seconds to wait for a person; then denied
    # A call that started but has no recorded result when its agent died: run it again, skip
    # it (the agent and the conversation are told it was not run again), or ask a person.
    on_interrupted: Literal["retry", "skip", "ask"] = "skip"

    @model_validator(mode="after")
    def _one_kind(self) -> ToolConfig:
        if sum(kind is not None for kind in (self.function, self.mcp, self.code)) != 1:
            raise ValueError("give exactly one of function, mcp, code")
        if self.approval is None:
            self.approval = "always" if self.code is not None else "never"
        return self

    def needs_approval(self, tool: str) -> bool:
        """Whether a call of `tool` waits for a person's approval."""
        return self.approval == "always" or (self.approval == "writes" and tool not in self.read_only)


def read_token_file(path: str, field: str) -> str:
    """The token in the file at `path`; ConfigError naming `field` if it cannot be read or is empty."""
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"{field}: cannot read {path}: {error.strerror}") from None
    if not token:
        raise ConfigError(f"{field}: {path} is empty")
    return token


class A2AAgentConfig(_Model):
    """A remote agent that speaks A2A (v1.0), as a participant: on its turn it is sent the task
    and the conversation so far, and what it answers is its message."""

    url: str  # its base URL: the agent card is at URL/.well-known/agent-card.json
    token: SecretStr | None = None  # a bearer token, if it wants one (or token_file)
    token_file: str | None = None
    timeout: float = Field(default=120.0, gt=0)  # seconds for one turn, as a model's call
    max_retries: int = Field(default=2, ge=0)  # when it cannot be reached, as a model's

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"expected an http:// or https:// URL, not {value[:80]!r}")
        return value.rstrip("/")

    def bearer(self) -> str | None:
        """The token, from the config or its file (read when needed, so it can be rotated)."""
        if self.token is not None:
            return self.token.get_secret_value()
        return None if self.token_file is None else read_token_file(self.token_file, "a2a.token_file")


class AgentConfig(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    # model: an agent process answers; human: a person does, from the page or a terminal
    # (`roundtable chat --as NAME`), and no process runs for the seat.
    kind: Literal["model", "human"] = "model"
    people: list[str] = Field(default_factory=list)  # human: who may answer (by name); empty: anyone
    description: str = ""
    system_message: str = "You are a helpful assistant."
    model: ModelConfig | None = None
    # Templates for the one user message the agent gets each turn; `first_prompt`
    # is used before the agent has spoken. Placeholders: {task}, {history},
    # {last_author}, {last_message}, {my_last}, {name}. Unset: the whole history
    # is passed as separate messages, which suits large models.
    prompt: str | None = None
    first_prompt: str | None = None
    tools: list[ToolConfig] = Field(default_factory=list)
    max_tool_iterations: int = Field(default=3, gt=0)  # model calls with tools per turn
    # Your own AgentChat agent: "mypkg.agents:make_agent", called with an AgentContext.
    factory: str | None = Field(default=None, pattern=IMPORT_PATH)
    # A remote A2A agent in this seat instead of a model: `a2a: https://...` or its settings.
    a2a: A2AAgentConfig | None = None
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    @field_validator("a2a", mode="before")
    @classmethod
    def _a2a_url_alone(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_kind_of_agent(self) -> AgentConfig:
        if self.a2a is not None and (self.factory is not None or self.tools):
            raise ValueError("an a2a agent brings its own tools and logic: leave out factory and tools")
        if self.kind == "human" and (self.model or self.a2a or self.factory or self.tools):
            raise ValueError("a human seat is answered by a person: leave out model, a2a, factory and tools")
        if self.kind == "model" and self.people:
            raise ValueError("people is for a human seat (kind: human)")
        return self

    @property
    def human(self) -> bool:
        return self.kind == "human"

    def may_answer(self, person: str) -> bool:
        """Whether `person` may take this human seat's turn."""
        return self.human and (not self.people or person in self.people)


class TerminationConfig(_Model):
    max_rounds: int | None = Field(default=6, gt=0)
    text_mention: str | None = None
    timeout: float | None = Field(default=600.0, gt=0)
    combine: Literal["any", "all"] = "any"

    @model_validator(mode="after")
    def _something_ends_it(self) -> TerminationConfig:
        if self.max_rounds is None and self.text_mention is None and self.timeout is None:
            raise ValueError("set at least one of max_rounds, text_mention, timeout, or the chat never ends")
        return self


class ManagerConfig(_Model):
    strategy: str = "round_robin"
    model: ModelConfig | None = None  # the selector's model; defaults to the top-level model
    graph: dict[str, list[str]] = Field(default_factory=dict)
    termination: TerminationConfig = Field(default_factory=TerminationConfig)
    turn_timeout: float = Field(default=180.0, gt=0)
    turn_retries: int = Field(default=1, ge=0)
    selector_retries: int = Field(default=2, ge=0)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)  # for each conversation, all agents together
    # The term of the lease that makes one manager of several the one that acts (lease.py): a
    # standby takes over about this long after the leader dies, or at once after a clean stop.
    lease: float = Field(default=6.0, ge=1.0, le=300.0)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r} (expected one of: {', '.join(STRATEGIES)})")
        return value


class SecurityConfig(_Model):
    """TLS and the bearer token. The token itself comes from ROUNDTABLE_TOKEN or token_file."""

    ca: str | None = None  # the CA that signed the certificates (workers check the host with it)
    cert: str | None = None  # the host's certificate ...
    key: str | None = None  # ... and its private key
    client_cert: str | None = None  # mutual TLS: the workers' certificate ...
    client_key: str | None = None  # ... and its private key
    mutual: bool = False
    token_file: str | None = None
    tokens: str | None = None  # per-identity tokens: each process reads tokens/<its identity>.token here
    identities: str | None = None  # the host: who may do what (identities.yaml from `roundtable certs --agents`)
    server_name: str | None = None  # the name in the host's certificate, if not the address
    insecure: bool = False  # allow listening off loopback without TLS and a token


class HostConfig(_Model):
    address: str = DEFAULT_HOST_ADDRESS
    connect_timeout: float = Field(default=CONNECT_TIMEOUT, gt=0)
    client_queue_limit: int = Field(default=10_000, gt=0)  # messages the host keeps for one slow client
    client_queue_bytes: int = Field(default=32 * 1024 * 1024, gt=0)  # bytes the host keeps for one slow client
    heartbeat: float = Field(default=2.0, gt=0)  # seconds between participants' "I am here"; 3 missed = unreachable
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @field_validator("address")
    @classmethod
    def _usable_address(cls, value: str) -> str:
        problem = address_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r}: {problem}")
        return value


class UIConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, gt=0, lt=65536)
    enabled: bool = True
    database: str | None = None  # SQLAlchemy URL for history; default: SQLite in the data dir
    auth: bool = False  # password sign-in
    users: dict[str, str] = Field(default_factory=dict)  # name -> password, when auth is on
    stop: Literal["anyone", "owner"] = "anyone"  # who in a shared conversation may stop it


class A2AServerConfig(_Model):
    """`roundtable a2a`: the room as an A2A agent, for other frameworks' clients to start and
    follow conversations. Clients present a bearer token: ROUNDTABLE_A2A_TOKEN, or token_file."""

    enabled: bool = False  # whether `roundtable up` serves it too
    host: str = "127.0.0.1"
    port: int = Field(default=8770, gt=0, lt=65536)
    public_url: str | None = None  # the address in the agent card, if clients reach it by another
    token_file: str | None = None
    timeout: float = Field(default=3600.0, gt=0)  # the longest one conversation is followed


class TelemetryConfig(_Model):
    otlp_endpoint: str | None = None  # e.g. http://collector:4317; or OTEL_EXPORTER_OTLP_ENDPOINT
    otlp_insecure: bool = True
    console: bool = False  # print spans as JSON on stderr, for debugging


class StoreConfig(_Model):
    url: str | None = None  # SQLAlchemy async URL; default: SQLite in data_dir


class SeedConfig(_Model):
    """Seed mode, the tutorial's shape: two agents on one topic, no manager."""

    task: str = "Please write a short story about the gingerbread in halloween!"
    max_turns: int = Field(default=6, gt=0)


class Config(_Model):
    host: HostConfig = Field(default_factory=HostConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    local_model: LocalModelConfig = Field(default_factory=LocalModelConfig)
    agents: list[AgentConfig] = Field(default_factory=list)
    manager: ManagerConfig = Field(default_factory=ManagerConfig)
    ui: UIConfig = Field(default_factory=UIConfig)
    a2a: A2AServerConfig = Field(default_factory=A2AServerConfig)
    seed: SeedConfig = Field(default_factory=SeedConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    data_dir: str | None = None
    bus: str | None = None  # nats://HOST:PORT[,...]: the NATS bus instead of the gRPC host (host.address)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.bus is not None:
            problem = address_problem(self.bus)
            if problem is not None or not self.bus.startswith(NATS_SCHEMES):
                raise ValueError(f"bus {self.bus!r}: {problem or 'expected nats://HOST:PORT[,nats://HOST:PORT...]'}")
            self.host = self.host.model_copy(update={"address": self.bus})
        names = [agent.name for agent in self.agents]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"agent names must be unique, repeated: {', '.join(duplicates)}")
        for source, targets in self.manager.graph.items():
            for name in [source, *targets]:
                if name not in names:
                    raise ValueError(f"manager.graph names {name!r}, which is not an agent")
        if self.manager.strategy == "graph" and not self.manager.graph:
            raise ValueError("strategy 'graph' needs manager.graph")
        return self

    def agent(self, name: str) -> AgentConfig:
        for agent in self.agents:
            if agent.name == name:
                return agent
        known = ", ".join(a.name for a in self.agents) or "none"
        raise ConfigError(f"no agent named {name!r} in the config (agents: {known})")

    def model_for(self, agent: AgentConfig) -> ModelConfig:
        return agent.model or self.model

    @property
    def uses_local_model(self) -> bool:
        models = [self.model_for(a) for a in self.agents if a.a2a is None and not a.human]  # those have none
        if self.manager.strategy == "selector":
            models.append(self.manager.model or self.model)
        return any(m.provider == "local" for m in models)

    @property
    def data_path(self) -> Path:
        raw = self.data_dir or os.environ.get("ROUNDTABLE_DATA_DIR") or "~/.local/share/roundtable"
        return Path(raw).expanduser()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{self.data_path / 'transcripts.db'}"


def _format_location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if part.isidentifier() else repr(part)
            text += f".{name}" if text else name
    return text


def _first_error(source: str, error: ValidationError) -> str:
    detail = error.errors()[0]
    message = str(detail["msg"]).removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        message = "unknown field"
    where = _format_location(tuple(detail["loc"]))
    text = f"{source}: {where}: {message}" if where else f"{source}: {message}"
    return " ".join(text.split("\n"))


def config_from_dict(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_first_error(source, error)) from None


def default_config_data() -> dict[str, Any]:
    text = resources.files("roundtable").joinpath("defaults.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """The config at `path`, or the built-in default (a writer and an editor on the local model)."""
    if path is None:
        return config_from_dict(default_config_data(), "built-in config")
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{file}: cannot read: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(f"{file}: {where}{problem}") from None
    if isinstance(data, dict):
        # A file states what differs from the built-in config, section by section.
        data = {**default_config_data(), **data}
    return config_from_dict(data, str(file))
