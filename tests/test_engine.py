"""The llama.cpp engine runs on any x86-64 CPU with AVX2, and a crash is named, not hidden.

The first test is the one that matters on a developer's AMD machine: it disassembles the
engine that setup installed and fails if it holds an AVX-512 or AMX instruction, which
only an Intel machine would otherwise reveal (by dying with SIGILL).
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO, free_port, write_config

from roundtable import engine, localmodel
from roundtable.engine import cmake_args, describe_engine_crash, describe_exit, scan_library
from roundtable.localmodel import EngineCrashed, smoke_test

FAKE_ENGINE = Path(__file__).parent / "fake_engine"
X86 = platform.machine().lower() in ("x86_64", "amd64")
SIGILL_LINE = (
    "the llama.cpp engine crashed with SIGILL (illegal instruction): it was built for another CPU;"
    " run scripts/setup --rebuild-engine"
)


@pytest.mark.skipif(not X86, reason="the instruction check is for x86-64")
def test_installed_engine_holds_no_instruction_beyond_avx2() -> None:
    libraries = engine.installed_libraries()
    assert any("ggml-cpu" in lib.name or "ggml" in lib.name for lib in libraries), libraries
    findings = engine.check_installed()
    assert findings == [], "\n".join(map(str, findings))


def test_installed_engine_is_the_portable_build_from_setup() -> None:
    marker = engine.read_marker()
    assert marker.get("key") == engine.build_key(), f"not installed by scripts/setup (marker: {marker})"
    assert engine.installed_is_ours(), "the installed libraries differ from the checked build"


def test_build_flags_never_target_the_build_machine() -> None:
    args = cmake_args("x86_64")
    assert "-DGGML_NATIVE=OFF" in args
    assert "-DGGML_AVX2=ON" in args and "-DGGML_FMA=ON" in args
    for feature in ("AVX512", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{feature}=OFF" in args
    assert not any("native" in a.lower() and a != "-DGGML_NATIVE=OFF" for a in args)
    assert "-DGGML_NATIVE=OFF" in cmake_args("aarch64")
    assert engine.build_key("x86_64") != engine.build_key("aarch64"), "a wheel must never cross architectures"


def _library(tmp_path: Path, name: str, asm: str) -> Path:
    source = tmp_path / f"{name}.c"
    source.write_text(f'void probe(void) {{ __asm__ volatile("{asm}"); }}\n')
    lib = tmp_path / f"lib{name}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", str(source), "-o", str(lib)], check=True)
    return lib


@pytest.mark.skipif(not X86 or shutil.which("gcc") is None, reason="needs gcc on x86-64")
@pytest.mark.parametrize(
    ("asm", "mnemonic"),
    [
        ("tilezero %tmm0", "tilezero"),  # AMX: what killed the engine on the Xeon
        ("vpternlogd $0xff, %zmm1, %zmm2, %zmm3", "vpternlogd"),  # AVX-512F
        ("vpaddd %ymm17, %ymm1, %ymm2", "vpaddd"),  # AVX-512VL: a high register on plain ymm
        ("kmovw %k1, %eax", "kmovw"),  # AVX-512 mask registers
        ("{vex} vpdpbusd %ymm1, %ymm2, %ymm3", "{vex}"),  # AVX-VNNI
        ("vdpbf16ps %ymm1, %ymm2, %ymm3", "vdpbf16ps"),  # AVX-512 BF16
    ],
)
def test_the_check_catches_instructions_beyond_the_baseline(tmp_path: Path, asm: str, mnemonic: str) -> None:
    finding = scan_library(_library(tmp_path, "beyond", asm))
    assert finding is not None, f"{asm} was not caught"
    assert finding.count == 1
    assert any(mnemonic in example for example in finding.examples), finding


@pytest.mark.skipif(not X86 or shutil.which("gcc") is None, reason="needs gcc on x86-64")
def test_the_check_passes_avx2_fma_and_f16c(tmp_path: Path) -> None:
    asm = (
        "vfmadd231ps %ymm1, %ymm2, %ymm3; vpaddd %ymm1, %ymm2, %ymm3;"
        " vcvtph2ps %xmm1, %ymm2; vpmovmskb %ymm1, %eax; vpmovzxbw %xmm1, %ymm2"
    )
    assert scan_library(_library(tmp_path, "avx2", asm)) is None


def test_a_death_by_signal_is_told_in_words() -> None:
    assert describe_exit(-signal.SIGILL) == "was killed by SIGILL (illegal instruction)"
    assert describe_exit(128 + signal.SIGSEGV) == "was killed by SIGSEGV (segmentation fault)"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"
    assert describe_engine_crash(-signal.SIGILL) == SIGILL_LINE


def _fake_engine_env(crash_on: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKE_ENGINE), os.environ.get("PYTHONPATH", "")]),
        "FAKE_ENGINE_CRASH_ON": str(crash_on),
    }


def _fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + bytes(64))
    return path


def test_smoke_test_names_an_engine_that_dies_on_its_first_token(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTHONPATH", str(FAKE_ENGINE))
    with pytest.raises(EngineCrashed) as raised:
        smoke_test(_fake_gguf(tmp_path), 1, timeout=60)
    assert str(raised.value) == SIGILL_LINE


def test_smoke_test_generates_tokens_with_the_real_engine() -> None:
    path = localmodel.resolve_model("small", progress=False)
    assert smoke_test(path, 1, timeout=120).strip(), "the engine generated only whitespace"


def test_model_prepare_reports_a_crashing_engine_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roundtable", "model", "--prepare", "--model", str(_fake_gguf(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        env=_fake_engine_env(crash_on=1),
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"roundtable: error: {SIGILL_LINE}"
    assert "Traceback" not in result.stderr


def test_model_server_that_dies_on_its_first_token_is_never_announced(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "roundtable", "model", "--model", str(_fake_gguf(tmp_path)), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_fake_engine_env(crash_on=1),
    )
    assert result.returncode == 1, result.stderr
    assert "roundtable ready" not in result.stdout, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"roundtable: error: {SIGILL_LINE}"


def test_up_names_a_crashing_engine_and_stops_restarting_it(tmp_path: Path) -> None:
    """The engine passes its start-up check, then dies on the writer's first request, every time."""
    cfg = write_config(
        tmp_path / "roundtable.yaml",
        {
            "host": {"address": f"127.0.0.1:{free_port()}"},
            "local_model": {"model": str(_fake_gguf(tmp_path)), "port": free_port()},
            "model": {"provider": "local", "max_retries": 0},
            "agents": [{"name": "writer"}, {"name": "editor"}],
            "manager": {"termination": {"max_rounds": 2}},
        },
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "roundtable", "up", "--config", str(cfg), "--no-ui", "--task", "Write a haiku"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_fake_engine_env(crash_on=2),
        cwd=REPO,
    )
    try:
        output, _ = up.communicate(timeout=240)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
    assert up.returncode == 1, output
    assert f"model exited with code 1: {SIGILL_LINE}; restarting" in output, output
    assert f"cannot reach the model server: the model server exited with code 1: {SIGILL_LINE}" in output, output
    assert "is it running" not in output, output
