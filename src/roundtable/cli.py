"""Every command. Each parses its arguments, builds the config, and calls one library function.

Bad input (config, flags) exits with code 2 and one line naming what is wrong;
failures at run time (an unreachable host, a timeout) exit with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, ValidationError

from . import crashpoints
from .config import (
    NATS_SCHEMES,
    AgentConfig,
    Config,
    ConfigError,
    ModelConfig,
    StoreUnavailable,
    check_address,
    load_config,
)
from .identities import CLIENT_IDENTITY, MANAGER_IDENTITY, PAGE_IDENTITY
from .runtime import setup_logging
from .security import Security, load_security
from .telemetry import setup_tracing, shutdown_tracing
from .wire import HostRefused, HostUnreachable

if TYPE_CHECKING:
    from autogen_core.models import ChatCompletionClient

    from .lease import Lease
    from .store import TranscriptStore
    from .worker import WorkerRuntime

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _fail(message: str, code: int) -> int:
    print(f"roundtable: error: {message}", file=sys.stderr)
    return code


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        return asyncio.run(coro_factory())
    except ConfigError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    except (HostUnreachable, HostRefused, StoreUnavailable, TimeoutError) as error:
        return _fail(str(error), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------- shared options


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: the built-in writer and editor)")
    parser.add_argument("--log-level", default=os.environ.get("ROUNDTABLE_LOG_LEVEL", "INFO"))
    parser.add_argument("--otel-endpoint", metavar="URL", help="send OpenTelemetry traces to this OTLP collector")
    parser.add_argument("--otel-console", action="store_true", default=None, help="print trace spans on stderr")


def load(args: argparse.Namespace) -> Config:
    """The config for a command, with tracing set up as it and the flags ask."""
    config = load_config(args.config)
    telemetry_cfg = config.telemetry.model_copy(
        update={
            k: v for k, v in (("otlp_endpoint", args.otel_endpoint), ("console", args.otel_console)) if v is not None
        }
    )
    setup_tracing(telemetry_cfg, args.command if args.command != "agent" else f"agent-{args.name}")
    return config.model_copy(update={"telemetry": telemetry_cfg})


def _add_host(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        "--bus",
        metavar="ADDR",
        help="the gRPC host, e.g. 127.0.0.1:50051, or a NATS bus, nats://127.0.0.1:4222 (default: from the config)",
    )
    _add_security(parser)


def _add_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (overrides the config; the token comes from ROUNDTABLE_TOKEN)")
    group.add_argument("--tls-ca", metavar="FILE", help="the CA that signed the certificates")
    group.add_argument("--tls-cert", metavar="FILE", help="the host's certificate (host only)")
    group.add_argument("--tls-key", metavar="FILE", help="the host's private key (host only)")
    group.add_argument("--tls-client-cert", metavar="FILE", help="mutual TLS: the workers' certificate")
    group.add_argument("--tls-client-key", metavar="FILE", help="mutual TLS: the workers' private key")
    group.add_argument("--mutual-tls", action="store_true", default=None, help="require/present client certificates")
    group.add_argument("--token-file", metavar="FILE", help="read the bearer token from this file")
    group.add_argument("--tokens", metavar="DIR", help="per-identity tokens: read DIR/tokens/<identity>.token")
    group.add_argument("--identities", metavar="FILE", help="host: who may do what (see `roundtable certs --agents`)")
    group.add_argument("--server-name", help="the name in the host's certificate, if not the address")


def security_from(args: argparse.Namespace, config: Config) -> Security:
    cfg = config.host.security
    updates = {
        key: getattr(args, flag)
        for flag, key in (
            ("tls_ca", "ca"),
            ("tls_cert", "cert"),
            ("tls_key", "key"),
            ("tls_client_cert", "client_cert"),
            ("tls_client_key", "client_key"),
            ("mutual_tls", "mutual"),
            ("token_file", "token_file"),
            ("tokens", "tokens"),
            ("identities", "identities"),
            ("server_name", "server_name"),
            ("insecure", "insecure"),
        )
        if getattr(args, flag, None) is not None
    }
    return load_security(cfg.model_copy(update=updates), identity_of(args))


def identity_of(args: argparse.Namespace) -> str | None:
    """Whose token this process presents, with per-identity tokens (`security.tokens`)."""
    if args.command == "agent":
        return str(args.name)
    return {"manager": MANAGER_IDENTITY, "ui": PAGE_IDENTITY}.get(args.command, CLIENT_IDENTITY)


async def _connect(args: argparse.Namespace, config: Config) -> WorkerRuntime:
    from .worker import connect_worker

    return await connect_worker(_host_address(args, config), config.host.connect_timeout, security_from(args, config))


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (overrides the config)")
    group.add_argument("--provider", help="local, openai, azure, openai-compatible or scripted")
    group.add_argument("--model", dest="model_name", help="model or deployment name")
    group.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://localhost:11434/v1")
    group.add_argument("--api-key", "--openai-api-key", dest="api_key", help="API key (or set OPENAI_API_KEY)")
    group.add_argument("--azure-openai-endpoint", dest="azure_endpoint")
    group.add_argument("--azure-openai-deployment", dest="azure_deployment")
    group.add_argument("--temperature", type=float)
    group.add_argument("--max-tokens", type=int)


def _model_from_flags(args: argparse.Namespace, base: ModelConfig) -> ModelConfig:
    """The base model config with whatever the flags say; the provider follows from the flags given."""
    updates: dict[str, Any] = {}
    provider = args.provider
    if provider is None:
        if args.azure_endpoint or args.azure_deployment:
            provider = "azure"
        elif args.api_key and not args.base_url:
            provider = "openai"
        elif args.base_url:
            provider = "openai-compatible"
    if provider is not None and provider != base.provider:
        updates["provider"] = provider
        base = ModelConfig(temperature=base.temperature, max_tokens=base.max_tokens)
    for flag, key in (
        ("model_name", "model"),
        ("base_url", "base_url"),
        ("azure_endpoint", "azure_endpoint"),
        ("azure_deployment", "azure_deployment"),
        ("temperature", "temperature"),
        ("max_tokens", "max_tokens"),
    ):
        value = getattr(args, flag)
        if value is not None:
            updates[key] = value
    if args.api_key:
        updates["api_key"] = SecretStr(args.api_key)
    try:
        return ModelConfig.model_validate({**base.model_dump(), **updates})
    except ValidationError as error:
        detail = error.errors()[0]
        field = ".".join(str(p) for p in detail["loc"]) or "model"
        raise ConfigError(f"model options: {field}: {str(detail['msg']).removeprefix('Value error, ')}") from None


def _host_address(args: argparse.Namespace, config: Config) -> str:
    flag = getattr(args, "host", None)
    return check_address(flag, "--host") if flag else config.host.address


# ---------------------------------------------------------------- commands


async def _bus(args: argparse.Namespace) -> int:
    from .natsbus import bus_security, serve_bus

    config = load_config(args.config)
    if args.print_security:
        print("\n".join(bus_security(config.host.security)))
        return 0
    address = check_address(args.address, "--address") if args.address else config.host.address
    if not address.startswith(NATS_SCHEMES):
        raise ConfigError(f"the bus address {address!r} is not a NATS URL: set `bus: nats://HOST:PORT` or --address")
    return await serve_bus(address, config.data_path / "nats", args.node, config.host.security)


async def _host(args: argparse.Namespace) -> int:
    from .host import start_host
    from .runtime import announce_ready, serve_until_signal

    config = load_config(args.config)
    address = check_address(args.address, "--address") if args.address else config.host.address
    if address.startswith(NATS_SCHEMES):
        raise ConfigError(f"{address} is a NATS bus: there is no gRPC host to run (`roundtable bus` runs NATS)")
    host = await start_host(
        address,
        security=security_from(args, config),
        queue_limit=config.host.client_queue_limit,
        queue_bytes=config.host.client_queue_bytes,
    )
    print(f"Host started at {address}", flush=True)
    announce_ready(f"host on {address}")
    await serve_until_signal()
    # Stopping cancels every open stream, which gRPC reports as an unhandled error each.
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)
    await host.stop(grace=1)
    return 0


def agent_settings(args: argparse.Namespace, config: Config) -> tuple[AgentConfig, ModelConfig]:
    known = {a.name for a in config.agents}
    if args.name in known:
        settings = config.agent(args.name)
    else:
        try:
            settings = AgentConfig(name=args.name)
        except ValidationError:
            raise ConfigError(
                f"agent name {args.name!r} is not valid: use letters, digits and underscores, starting with a letter"
            ) from None
    flags = (("system_message", args.system_message), ("description", args.description), ("factory", args.factory))
    updates = {k: v for k, v in flags if v}
    if updates:
        try:
            settings = AgentConfig.model_validate({**settings.model_dump(), **updates})
        except ValidationError:
            raise ConfigError(
                f"--factory {args.factory!r}: expected MODULE:FUNCTION, e.g. mypkg.agents:make_agent"
            ) from None
    model = _model_from_flags(args, config.model_for(settings))
    return settings.model_copy(update={"model": model}), model


async def _agent(args: argparse.Namespace) -> int:
    from .models import build_client
    from .outbox import Outbox
    from .participant import check_factory, register_participant
    from .runtime import announce_ready, serve_until_signal
    from .tools import AgentTools, ToolsUnavailable
    from .worker import stop_worker

    config = load(args)
    settings, model = agent_settings(args, config)
    if settings.human:
        raise ConfigError(
            f"{settings.name} is a human seat: people answer from the page, or with "
            f"`roundtable chat --as {settings.name}`; no agent process runs for it"
        )
    seed = None
    if args.seed:
        seed = config.seed.model_copy(
            update={k: v for k, v in (("task", args.seed_task), ("max_turns", args.max_turns)) if v is not None}
        )
    client = build_client(model, config.local_model)
    tools = AgentTools.from_config(settings)  # a bad import path is a ConfigError, before connecting
    if settings.factory is not None:
        check_factory(settings, client)
    if settings.a2a is not None:
        try:
            settings.a2a.bearer()  # an unreadable token file is bad input, before anything connects
        except ConfigError as error:
            raise ConfigError(f"agents.{settings.name}.{error}") from None
    outbox = None if seed else Outbox.at(config.data_path / "agents" / settings.name / "replies")
    try:
        await tools.start()
    except ToolsUnavailable as error:
        await tools.stop()
        return _fail(str(error), EXIT_FAILED)
    runtime = await _connect(args, config)
    try:
        heartbeat = await register_participant(runtime, settings, client, seed, config.host.heartbeat, tools, outbox)
        mode = "seed mode" if seed else "managed"
        names = [name for listed in tools.names.values() for name in listed]
        with_tools = f", tools: {', '.join(names)}" if names else ""
        kind = f"a2a {settings.a2a.url}" if settings.a2a is not None else model.provider
        announce_ready(f"agent {settings.name} ({kind}, {mode}{with_tools})")
        await serve_until_signal()
        if heartbeat is not None:
            heartbeat.cancel()
    finally:
        await stop_worker(runtime)
        await tools.stop()
    return 0


def manager_config(args: argparse.Namespace, config: Config) -> Config:
    manager = config.manager
    termination = manager.termination
    term_updates = {
        key: value
        for key, value in (
            ("max_rounds", args.max_rounds),
            ("text_mention", args.text_mention),
            ("timeout", args.timeout),
        )
        if value is not None
    }
    if term_updates:
        termination = termination.model_copy(update=term_updates)
    manager = manager.model_copy(
        update={"termination": termination, **({"strategy": args.strategy} if args.strategy else {})}
    )
    agents = config.agents
    if args.agents:
        by_name = {a.name: a for a in agents}
        agents = [by_name.get(name) or AgentConfig(name=name) for name in args.agents.split(",") if name]
    data = config.model_dump()  # SecretStr values stay SecretStr in a python-mode dump
    data["manager"] = manager.model_dump()
    data["agents"] = [a.model_dump() for a in agents]
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"manager options: {str(error.errors()[0]['msg']).removeprefix('Value error, ')}") from None


def _require_agents(config: Config, source: str | None) -> None:
    if not config.agents:
        raise ConfigError(f"{source or 'the config'}: agents: there are none; add at least one under `agents:`")


async def _manager(args: argparse.Namespace) -> int:
    from .lease import Lease
    from .models import build_client
    from .runtime import shutdown_on_signal, unless_stopped
    from .store import TranscriptStore

    config = manager_config(args, load(args))
    _require_agents(config, args.config)
    selector = None
    if config.manager.strategy == "selector":
        selector = build_client(config.manager.model or config.model, config.local_model)
    store = TranscriptStore(config.store_url)
    await store.open()
    lease = Lease(store, config.manager.lease)
    stopped = asyncio.Event()

    def standing_by(holder: str) -> None:
        print(
            f"roundtable: manager standing by: {holder} holds the manager lease; taking over if it "
            f"lapses ({config.manager.lease:g} s without renewal)",
            flush=True,
        )

    with shutdown_on_signal(stopped):
        try:
            if not await unless_stopped(lease.wait(standing_by), stopped):
                return 0
            return await _lead(args, config, store, lease, selector, stopped)
        finally:
            await lease.release()
            await store.close()


async def _lead(
    args: argparse.Namespace,
    config: Config,
    store: TranscriptStore,
    lease: Lease,
    selector: ChatCompletionClient | None,
    stopped: asyncio.Event,
) -> int:
    """Drive the conversations while this process holds the manager lease."""
    from .lease import LeaseLost
    from .manager import register_manager
    from .runtime import announce_ready, unless_stopped
    from .worker import stop_worker

    # Renewed from the moment it is taken: connecting and subscribing can take longer than the
    # term (a bus node just lost), and a lease left alone meanwhile lapses to a standby.
    keeping = asyncio.ensure_future(lease.keep())
    try:
        runtime = await _connect(args, config)
        try:
            watcher = await register_manager(
                runtime, config.agents, config.manager, store, selector, config.host.heartbeat, lease=lease
            )
            names = ", ".join(a.name for a in config.agents)
            announce_ready(f"manager ({config.manager.strategy}; agents: {names})")
            try:
                await unless_stopped(keeping, stopped)
            except LeaseLost as error:
                print(f"roundtable: error: {error}; stopping: another manager drives the conversations now", flush=True)
                return 1
            finally:
                watcher.cancel()
        finally:
            await stop_worker(runtime)
    finally:
        keeping.cancel()
    return 0


async def _chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    config = load(args)
    task = sys.stdin.read() if args.task == "-" else args.task
    seats = [a.name for a in config.agents if args.answer_as and a.may_answer(args.answer_as)]
    if args.answer_as and not seats:
        human = ", ".join(a.name for a in config.agents if a.human) or "none"
        raise ConfigError(f"--as {args.answer_as}: no human seat takes answers from that name (human seats: {human})")
    outcome = await run_chat(
        _host_address(args, config),
        task,
        args.timeout,
        config.host.connect_timeout,
        args.start_timeout,
        security=security_from(args, config),
        answer_as=args.answer_as,
        seats=seats,
    )
    return 0 if outcome.ok else EXIT_FAILED


def _model_command(args: argparse.Namespace) -> int:
    from .localmodel import EngineCrashed, ModelError, resolve_model, serve, smoke_test

    config = load_config(args.config)
    local = config.local_model
    cache = Path(local.cache_dir).expanduser() if local.cache_dir else None
    try:
        if args.prepare:
            path = resolve_model(args.model or local.model, cache)
            text = smoke_test(path, args.threads or local.n_threads)
            print(f"model ready: {path} (the engine generated {text!r})")
            return 0
        return serve(
            args.model or local.model,
            local.host,
            args.port or local.port,
            local.n_ctx,
            args.threads or local.n_threads,
            cache,
        )
    except EngineCrashed as error:
        return _fail(str(error), EXIT_FAILED)
    except ModelError as error:
        return _fail(str(error), EXIT_BAD_INPUT)


async def _up(args: argparse.Namespace) -> int:
    from .launcher import run_up

    config = load_config(args.config)
    _require_agents(config, args.config)
    bus: str | None = None
    if args.bus:
        from .natsbus import LOCAL_CLUSTER

        bus = LOCAL_CLUSTER if args.bus == "nats" else check_address(args.bus, "--bus")
        if not bus.startswith(NATS_SCHEMES):
            raise ConfigError(f"--bus {args.bus}: expected nats://HOST:PORT[,...], or nats for three local nodes")
        config = Config.model_validate({**config.model_dump(), "bus": bus})
    return await run_up(config, args.config, task=args.task, with_ui=not args.no_ui, chat_timeout=args.timeout, bus=bus)


def _ui_command(args: argparse.Namespace) -> int:
    from .ui import serve_ui

    config = load_config(args.config)
    return serve_ui(
        config, _host_address(args, config), args.port, seed=args.seed, security=security_from(args, config)
    )


async def _a2a(args: argparse.Namespace) -> int:
    from .a2a_room import load_token, serve
    from .httpserve import listen
    from .worker import stop_worker

    config = load(args)
    updates = {k: v for k, v in (("host", args.listen), ("port", args.port), ("public_url", args.public_url)) if v}
    settings = config.a2a.model_copy(update=updates)
    load_token(settings)  # a missing or unreadable token is bad input, before anything connects
    sock = listen(settings.host, settings.port, "the A2A endpoint")
    try:
        runtime = await _connect(args, config)
        try:
            await serve(config, settings, runtime, sock)
        finally:
            await stop_worker(runtime)
    finally:
        sock.close()
    return 0


async def _status(args: argparse.Namespace) -> int:
    from .status import format_status, gather_status

    config = load_config(args.config)
    status = await gather_status(
        _host_address(args, config),
        config.store_url,
        config.host.connect_timeout,
        security_from(args, config),
        heartbeat=config.host.heartbeat,
    )
    print(format_status(status))
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roundtable", description="A distributed group chat of LLM agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    host = sub.add_parser("host", help="run the gRPC host that routes messages between processes")
    host.add_argument("--address", help="where to listen (default: from the config, 127.0.0.1:50051)")
    host.add_argument(
        "--insecure", action="store_true", default=None, help="allow listening off loopback without TLS and a token"
    )
    _add_security(host)
    _add_config(host)

    bus = sub.add_parser("bus", help="run a NATS server on this machine for the NATS bus (from `bus:` in the config)")
    bus.add_argument("--address", help="nats://HOST:PORT[,...] to serve (default: the config's bus)")
    bus.add_argument(
        "--node",
        type=int,
        default=0,
        help="serve this server of the list (0 first), as a node of a cluster of them all",
    )
    bus.add_argument(
        "--print-security",
        action="store_true",
        help="print the NATS config lines for the config's security (TLS; a user per identity, or the token) and exit",
    )
    _add_config(bus)

    certs = sub.add_parser("certs", help="write a development CA, host and client certificates, and a token")
    certs.add_argument("directory", help="where to write ca.pem, server.pem/.key, client.pem/.key and token")
    certs.add_argument(
        "--name", action="append", dest="names", help="a host name or IP the host is reached by (repeatable)"
    )
    certs.add_argument(
        "--agents",
        metavar="NAMES",
        help="per-identity tokens instead of one shared token: for these agents (comma-separated), "
        "the manager, the page and terminal clients; and identities.yaml for the host",
    )

    agent = sub.add_parser("agent", help="run one participant")
    _add_host(agent)
    agent.add_argument("--name", required=True, help="the agent's name (from the config, or a new one)")
    agent.add_argument("--system-message", help="what the agent is told it is")
    agent.add_argument("--description", help="what the manager is told about the agent")
    agent.add_argument("--factory", metavar="MODULE:FUNCTION", help="your own AgentChat agent (see README)")
    agent.add_argument("--seed", action="store_true", help="seed mode: the tutorial's two agents, no manager")
    agent.add_argument("--seed-task", help="seed mode: the opening message")
    agent.add_argument("--max-turns", type=int, help="seed mode: stop after this many replies")
    _add_model_options(agent)
    _add_config(agent)

    manager = sub.add_parser("manager", help="run the group chat manager")
    _add_host(manager)
    manager.add_argument("--strategy", help="round_robin, random, selector or graph")
    manager.add_argument("--agents", help="comma-separated participant names (default: the config's agents)")
    manager.add_argument("--max-rounds", type=int)
    manager.add_argument("--text-mention", help="end when an agent writes this, e.g. APPROVE")
    manager.add_argument("--timeout", type=float, help="end a conversation after this many seconds")
    _add_config(manager)

    chat = sub.add_parser("chat", help="start a conversation and print it as it happens")
    chat.add_argument("task", help="what the agents should work on ('-' reads it from standard input)")
    _add_host(chat)
    chat.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    chat.add_argument("--start-timeout", type=float, default=15.0, help="how long to wait for a manager (default 15)")
    chat.add_argument(
        "--as", dest="answer_as", metavar="NAME", help="take the turns of the human seats NAME may answer (kind: human)"
    )
    _add_config(chat)

    model = sub.add_parser("model", help="serve the embedded local model (OpenAI-compatible, on 127.0.0.1)")
    model.add_argument("--model", help="default (Qwen2.5-Coder-1.5B), small (SmolLM2-135M) or a GGUF path")
    model.add_argument("--port", type=int, help="default: from the config (8765)")
    model.add_argument("--threads", type=int, help="llama.cpp threads (default: 1 on 2 cores, else cores-1)")
    model.add_argument(
        "--prepare",
        action="store_true",
        help="only install the model file (join, verify, generate a few tokens), then exit",
    )
    _add_config(model)

    engine = sub.add_parser("engine", help="build, install and check the portable llama.cpp engine (scripts/setup)")
    what = engine.add_mutually_exclusive_group()
    what.add_argument("--rebuild", action="store_true", help="build it again even if a checked build is installed")
    what.add_argument("--check", action="store_true", help="only check the installed engine's instructions")

    up = sub.add_parser("up", help="start the whole chat: host, model, manager, agents and the web page")
    up.add_argument("--task", help="run this one conversation in the terminal, then stop everything")
    up.add_argument("--no-ui", action="store_true", help="do not start the web page")
    up.add_argument("--timeout", type=float, default=900.0, help="with --task: give up after this many seconds")
    up.add_argument(
        "--bus",
        metavar="ADDR",
        help="run on a NATS bus: nats://HOST:PORT[,...] (a node each on this machine), or `nats` for three local nodes",
    )
    _add_config(up)

    status = sub.add_parser("status", help="show the connected agents and the open conversations")
    _add_host(status)
    _add_config(status)

    bench = sub.add_parser("bench", help="run the benchmarks (benchmarks/run; e.g. --quick)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to benchmarks/run")

    ui = sub.add_parser("ui", help="serve the web page (Chainlit)")
    _add_host(ui)
    ui.add_argument("--port", type=int, help="default: from the config (8000)")
    ui.add_argument("--seed", action="store_true", help="follow the tutorial's seed-mode conversation")
    _add_config(ui)

    a2a = sub.add_parser("a2a", help="serve the room as an A2A agent: A2A clients start and follow conversations")
    _add_host(a2a)
    a2a.add_argument("--port", type=int, help="default: from the config (8770)")
    a2a.add_argument("--listen", metavar="HOST", help="the address to listen on (default: from the config, 127.0.0.1)")
    a2a.add_argument("--public-url", metavar="URL", help="the address in the agent card, if clients use another")
    _add_config(a2a)

    return parser


def _bench(args: argparse.Namespace) -> int:
    """`roundtable bench` is `benchmarks/run` of a source checkout."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "run"
    if not script.exists():
        raise ConfigError("the benchmarks come with the source checkout: run benchmarks/run there")
    return subprocess.call([str(script), *args.bench_args])


def _engine(args: argparse.Namespace) -> int:
    from .engine import EngineError, baseline, check_installed, ensure_engine

    try:
        if args.check:
            findings = check_installed()
            for finding in findings:
                print(finding)
            print(f"engine: {'NOT ' if findings else ''}within {baseline()}")
            return EXIT_FAILED if findings else 0
        print(ensure_engine(rebuild=args.rebuild), flush=True)
        return 0
    except EngineError as error:
        return _fail(str(error), EXIT_FAILED)


def _certs(args: argparse.Namespace) -> int:
    from .identities import write_identities
    from .security import write_dev_certificates

    names = args.names or ["localhost", "127.0.0.1"]
    directory = Path(args.directory)
    agents = [name.strip() for name in (args.agents or "").split(",") if name.strip()]
    try:
        for agent in agents:
            AgentConfig(name=agent)
    except ValidationError:
        return _fail(f"--agents: {agent!r} is not an agent name (letters, digits and underscores)", EXIT_BAD_INPUT)
    if args.agents is not None and not agents:
        return _fail("--agents: name at least one agent, e.g. --agents writer,editor", EXIT_BAD_INPUT)
    written = write_dev_certificates(directory, names, shared_token=not agents)
    if agents:
        written += write_identities(directory, agents)
    for path in written:
        print(path)
    secret = "the tokens/ directory" if agents else "token"
    print(f"the host certificate is for: {', '.join(names)}; keep {secret} and the .key files private")
    if agents:
        print("give each process only its own token; the host reads identities.yaml (security.identities)")
    return 0


#: Commands that run their own event loop (or none).
BLOCKING: dict[str, Callable[[argparse.Namespace], int]] = {
    "model": _model_command,
    "ui": _ui_command,
    "certs": _certs,
    "bench": _bench,
    "engine": _engine,
}

COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "host": _host,
    "bus": _bus,
    "agent": _agent,
    "manager": _manager,
    "chat": _chat,
    "up": _up,
    "status": _status,
    "a2a": _a2a,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.name if args.command == "agent" else args.command, getattr(args, "log_level", "INFO"))
    try:
        crashpoints.arm()
    except ConfigError as error:
        return _fail(str(error), EXIT_BAD_INPUT)
    if args.command in BLOCKING:
        try:
            return BLOCKING[args.command](args)
        except ConfigError as error:
            return _fail(str(error), EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            return 130
    try:
        return _run(lambda: COMMANDS[args.command](args))
    finally:
        shutdown_tracing()


# ---------------------------------------------------------------- the tutorial's scripts


def tutorial_host(argv: Sequence[str] | None = None) -> int:
    """`python3 host.py --host-address ADDR` or `python3 host.py ADDR`."""
    parser = argparse.ArgumentParser(prog="host.py")
    parser.add_argument("address", nargs="?")
    parser.add_argument("--host-address", dest="host_address")
    args = parser.parse_args(argv)
    return main(["host", "--address", args.host_address or args.address or "localhost:5000"])


def tutorial_agent(argv: Sequence[str] | None = None) -> int:
    """`python3 agent.py --host-address ADDR --agent-name N --agent-system-message S [model flags]`,
    or Exercise 4's positional `python3 agent.py ADDR NAME SYSTEM_MESSAGE`."""
    parser = argparse.ArgumentParser(prog="agent.py")
    parser.add_argument("positional", nargs="*", metavar="HOST_ADDRESS AGENT_NAME SYSTEM_MESSAGE")
    parser.add_argument("--host-address", dest="host_address")
    parser.add_argument("--agent-name", dest="agent_name")
    parser.add_argument("--agent-system-message", dest="agent_system_message")
    parser.add_argument("--openai-api-key", dest="openai_api_key")
    parser.add_argument("--azure-openai-endpoint", dest="azure_openai_endpoint")
    parser.add_argument("--azure-openai-deployment", dest="azure_openai_deployment")
    args = parser.parse_args(argv)
    positional = list(args.positional) + [None] * (3 - len(args.positional))
    if len(args.positional) > 3:
        parser.error("expected at most 3 positional arguments: HOST_ADDRESS AGENT_NAME SYSTEM_MESSAGE")
    host = args.host_address or positional[0] or "localhost:5000"
    name = args.agent_name or positional[1]
    system_message = args.agent_system_message or positional[2]
    if not name:
        parser.error("the agent needs a name: --agent-name NAME (or the second positional argument)")
    command = ["agent", "--seed", "--host", host, "--name", name]
    if system_message:
        command += ["--system-message", system_message, "--description", system_message]
    if not (args.openai_api_key or args.azure_openai_endpoint) and os.environ.get("OPENAI_API_KEY"):
        command += ["--provider", "openai"]  # the tutorial's agents talk to OpenAI when a key is set
    for flag, value in (
        ("--openai-api-key", args.openai_api_key),
        ("--azure-openai-endpoint", args.azure_openai_endpoint),
        ("--azure-openai-deployment", args.azure_openai_deployment),
    ):
        if value:
            command += [flag, value]
    return main(command)


def main_entry() -> None:
    sys.exit(main())
