"""The web page: a Chainlit server that shows the group chat live and lets a person take part.

Importing this package does not import Chainlit, which reads its settings on import;
`serve_ui` prepares them first.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from ..config import Config, ConfigError, load_config
from ..runtime import setup_logging
from ..security import Security


def serve_ui(
    config: Config,
    host_address: str,
    port: int | None = None,
    host: str | None = None,
    *,
    seed: bool = False,
    security: Security | None = None,
) -> int:
    """Serve the page in the foreground until SIGINT or SIGTERM, and return the exit code.

    `port` and `host` (where to listen) default to the config's `ui` section, `security` (TLS,
    the host's token) to its `host.security`. With `seed`, every tab follows the tutorial's writer
    and editor (seed mode, no manager) instead of running conversations of its own.
    """
    from .server import EXIT_BAD_INPUT, fail, run
    from .settings import page_settings

    try:
        settings = page_settings(config, host_address, port, host, seed, security)
    except ConfigError as error:
        return fail(str(error), EXIT_BAD_INPUT)
    return run(settings)


def tutorial_ui(argv: Sequence[str] | None = None) -> int:
    """The tutorial's `python3 ui.py --host-address ADDR` (or `python3 ui.py ADDR`): the page
    in seed mode, showing the writer and editor as they talk."""
    parser = argparse.ArgumentParser(prog="ui.py", description="The tutorial's page: follow the writer and editor.")
    parser.add_argument("address", nargs="?", metavar="HOST_ADDRESS")
    parser.add_argument("--host-address", dest="host_address", help="the gRPC host (default localhost:5000)")
    parser.add_argument("--port", type=int, help="where the page listens (default: the config's, 8000)")
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: the built-in one)")
    args = parser.parse_args(argv)
    setup_logging("ui", os.environ.get("ROUNDTABLE_LOG_LEVEL", "INFO"))
    try:
        config = load_config(args.config)
    except ConfigError as error:
        from .server import EXIT_BAD_INPUT, fail

        return fail(str(error), EXIT_BAD_INPUT)
    return serve_ui(config, args.host_address or args.address or "localhost:5000", port=args.port, seed=True)


__all__ = ["serve_ui", "tutorial_ui"]
