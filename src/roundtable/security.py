"""Transport security: TLS credentials, the bearer token, and development certificates.

The token is read from the environment or a file and never logged; the host checks
it in a server interceptor before a request body is parsed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .config import ConfigError, SecurityConfig
from .identities import Authority, token_path

TOKEN_ENV = "ROUNDTABLE_TOKEN"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass(frozen=True)
class Security:
    """What a process needs to talk to the host safely. Everything optional: loopback stays zero-config."""

    token: str | None = None
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    mutual: bool = False
    server_name: str | None = None
    insecure: bool = False
    identities: str | None = None  # the host's identities file: a token per identity, each with its role
    #: Whose token this is, when it is one of per-identity tokens (`tokens`): on a NATS bus, the user.
    identity: str | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    def __repr__(self) -> str:  # never show the token or the key
        return f"Security(tls={self.tls}, token={'set' if self.token else 'none'}, mutual={self.mutual})"


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error.strerror}") from None


def load_security(cfg: SecurityConfig, identity: str | None = None) -> Security:
    """What a process presents to the host. Its token: ROUNDTABLE_TOKEN, else `token_file`, else
    its own in `tokens` (DIR/tokens/<identity>.token, see identities.py)."""
    token = os.environ.get(TOKEN_ENV) or None
    token_file = cfg.token_file
    own = token is None and token_file is None and cfg.tokens is not None and identity is not None
    if own:
        assert cfg.tokens is not None and identity is not None
        token_file = str(token_path(cfg.tokens, identity))
        if not Path(token_file).is_file():
            raise ConfigError(
                f"no token for {identity!r}: {token_file} does not exist "
                "(`roundtable certs DIR --agents NAMES` makes one for each agent, the manager, ui and client)"
            )
    if token is None and token_file:
        raw = _read(token_file, "token file")
        token = raw.decode().strip() if raw else None
        if not token:
            raise ConfigError(f"the token file {token_file} is empty")
    return Security(
        token=token,
        ca=_read(cfg.ca, "CA certificate"),
        cert=_read(cfg.cert, "certificate"),
        key=_read(cfg.key, "private key"),
        client_cert=_read(cfg.client_cert, "client certificate"),
        client_key=_read(cfg.client_key, "client private key"),
        mutual=cfg.mutual,
        server_name=cfg.server_name,
        insecure=cfg.insecure,
        identities=cfg.identities,
        identity=identity if own else None,
    )


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]") or "localhost"
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_address(address: str, security: Security) -> None:
    """Off loopback, anyone who can reach the port could read and inject: insist on TLS and a token."""
    tokens = bool(security.token or security.identities)
    if is_loopback(address) or security.insecure or (security.tls and tokens):
        return
    missing = " and ".join(w for w, ok in (("TLS", security.tls), ("a token", tokens)) if not ok)
    raise ConfigError(
        f"refusing to listen on {address} without {missing}: set security.cert/key and {TOKEN_ENV} "
        "(see `roundtable certs`), or pass --insecure if you really mean it"
    )


# ---------------------------------------------------------------- gRPC credentials


def server_credentials(security: Security) -> grpc.ServerCredentials:
    if security.cert is None or security.key is None:
        raise ConfigError("TLS on the host needs both security.cert and security.key")
    if security.mutual and security.ca is None:
        raise ConfigError("mutual TLS needs security.ca to check the clients' certificates")
    return grpc.ssl_server_credentials(
        [(security.key, security.cert)],
        root_certificates=security.ca if security.mutual else None,
        require_client_auth=security.mutual,
    )


def channel_options(security: Security) -> list[tuple[str, Any]]:
    if security.server_name:
        return [("grpc.ssl_target_name_override", security.server_name)]
    return []


def channel_credentials(security: Security) -> grpc.ChannelCredentials:
    if security.mutual and (security.client_cert is None or security.client_key is None):
        raise ConfigError("mutual TLS needs security.client_cert and security.client_key on every worker")
    creds = grpc.ssl_channel_credentials(
        root_certificates=security.ca,
        private_key=security.client_key if security.mutual else None,
        certificate_chain=security.client_cert if security.mutual else None,
    )
    if security.token:
        return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(security.token))
    return creds


def token_metadata(security: Security) -> list[tuple[str, str]]:
    """Over TLS the token travels as call credentials; on a plain loopback channel gRPC
    refuses call credentials, so it goes in the metadata instead."""
    if security.token and not security.tls:
        return [("authorization", f"Bearer {security.token}")]
    return []


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects every call without a known bearer token, before its body is read."""

    def __init__(self, authority: Authority) -> None:
        self._authority = authority

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if self._authority.admits(authorization(handler_call_details.invocation_metadata)):
            return await continuation(handler_call_details)
        return _deny(handler_call_details.method or "")


def authorization(metadata: Any) -> str:
    """The `authorization` value in a call's metadata, or ''."""
    value = dict(metadata or ()).get("authorization", "")
    return value if isinstance(value, str) else ""


def _deny(method: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

    async def abort_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

    if method.endswith("Channel"):  # OpenChannel, OpenControlChannel: streams
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


# ---------------------------------------------------------------- development certificates


def write_dev_certificates(directory: Path, hosts: list[str], days: int = 365, shared_token: bool = True) -> list[Path]:
    """A development CA, a server certificate for `hosts`, a client certificate, and (unless
    per-identity tokens are made instead, see identities.py) one shared token."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "roundtable dev"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("roundtable dev CA"))
        .issuer_name(name("roundtable dev CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key, server_cert = leaf(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client_key, client_cert = leaf("roundtable client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def pem_key(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    files = {
        "ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.pem": server_cert.public_bytes(serialization.Encoding.PEM),
        "server.key": pem_key(server_key),
        "client.pem": client_cert.public_bytes(serialization.Encoding.PEM),
        "client.key": pem_key(client_key),
    }
    if shared_token:
        files["token"] = (secrets.token_urlsafe(32) + "\n").encode()
    written = []
    for filename, data in files.items():
        path = directory / filename
        path.write_bytes(data)
        if filename.endswith((".key", "token")):
            path.chmod(0o600)
        written.append(path)
    return written
