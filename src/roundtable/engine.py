"""The llama.cpp engine: one portable build for any x86-64 CPU with AVX2, built and checked here.

llama-cpp-python compiles llama.cpp at install time, by default for the build machine's CPU,
and pip's wheel cache then hands that build to any machine that shares the cache. A native
build on an Intel Xeon with AMX dies with SIGILL on another (or even the same) CPU, so setup
builds the wheel itself, with a fixed baseline, keyed by its flags, and refuses any library
that holds an instruction beyond that baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ENGINE_PACKAGE = "llama-cpp-python"
ENGINE_VERSION = "0.3.36"

#: x86-64-v3 without anything newer: every x86-64 CPU since 2013-2015 (Haswell, Zen 1) runs it.
X86_BASELINE = "x86-64-v3 (SSE4.2, AVX, AVX2, FMA, F16C, BMI2)"
_X86_FLAGS = ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_SSE42")
_X86_OFF = (
    "GGML_AVX512",
    "GGML_AVX512_VBMI",
    "GGML_AVX512_VNNI",
    "GGML_AVX512_BF16",
    "GGML_AVX_VNNI",
    "GGML_AMX_TILE",
    "GGML_AMX_INT8",
    "GGML_AMX_BF16",
)

REBUILD_HINT = "run scripts/setup --rebuild-engine"
MARKER_NAME = "roundtable-engine.json"  # in the virtual environment's root (sys.prefix)


class EngineError(Exception):
    """The engine cannot be built, installed or trusted; the message says what to do."""


def cmake_args(machine: str | None = None) -> list[str]:
    """The CMake flags of our build: never the build machine's own CPU."""
    machine = (machine or platform.machine()).lower()
    args = ["-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF", "-DLLAMA_CURL=OFF"]
    if machine in ("x86_64", "amd64"):
        args += [f"-D{flag}=ON" for flag in _X86_FLAGS]
        args += [f"-D{flag}=OFF" for flag in _X86_OFF]
    return args


def baseline(machine: str | None = None) -> str:
    machine = (machine or platform.machine()).lower()
    return X86_BASELINE if machine in ("x86_64", "amd64") else f"{machine} generic (GGML_NATIVE=OFF)"


def build_key(machine: str | None = None) -> str:
    """What the wheel depends on: the package version, the interpreter and the flags. Two
    machines that agree on these may share the wheel, because nothing of the CPU is in it."""
    machine = (machine or platform.machine()).lower()
    parts = [ENGINE_PACKAGE, ENGINE_VERSION, sys.implementation.cache_tag or "", machine, *cmake_args(machine)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "roundtable" / "engine" / build_key()


# --- what the libraries hold ---------------------------------------------------------------

# AT&T syntax, as objdump prints it. Beyond x86-64-v3:
#   AVX-512: zmm and mask registers, xmm/ymm 16-31, embedded broadcasts, EVEX-only mnemonics
#   AMX: tile registers and instructions; AVX-VNNI and AVX-512 VNNI/BF16 dot products
_BEYOND = re.compile(
    r"%zmm\d|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b|\{1to\d+\}|%tmm\d|\{evex\}|\{vex\}"
    r"|^(ldtilecfg|sttilecfg|tilezero|tileloadd\w*|tilestored|tilerelease|tdp\w+"
    r"|k(mov|and|andn|or|xor|xnor|not|shiftl|shiftr|test|ortest|unpck|add)[bwdq]"
    r"|vpternlog[dq]|vperm[it]2\w+|v(p)?compress\w*|v(p)?expand\w*|vpconflict[dq]|vplzcnt[dq]"
    r"|vpdp[bw]\w+|vdpbf16ps|vcvtne2?ps2bf16|vcvtneps2bf16|vpmadd52\w+"
    r"|vpopcnt[bwdq]|vpshufbitqmb|vgf2p8\w+|vpmovm2\w|vpmov[bwdq]2m|vpmovu?s?(db|dw|qb|qw|qd|wb)"
    r"|vrndscale\w+|vrcp14\w+|vrsqrt14\w+|vgetexp\w+|vgetmant\w+|vscalef\w+|vfixupimm\w+"
    r"|vrange\w+|vreduce\w+|vfpclass\w+|valign[dq]|v(p)?blendm\w+|vpbroadcastm\w+"
    r"|vcvtu\w+|vcvtt?p[sd]2u\w+|vcvtqq2\w+|vcvtt?p[sd]2qq|vpabsq|vpm(ax|in)[su]q|vpmullq"
    r"|vpro[lr]v?[dq]|vpsravq|vpsraq"
    r"|v(insert|extract)[fi](32x4|64x2|32x8|64x4)|vshuf[fi](32x4|64x2)|vbroadcast[fi](32x[248]|64x[24])"
    r"|v(add|sub|mul|div|max|min|sqrt|rcp|rsqrt|fn?m(add|sub)\w*)[ps]h)\b"
)


@dataclass(frozen=True)
class Finding:
    library: str
    count: int
    examples: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.library}: {self.count} instructions beyond the baseline, e.g. {', '.join(self.examples)}"


def _objdump() -> str:
    tool = shutil.which("objdump")
    if tool is None:
        raise EngineError("objdump is needed to check the engine: install binutils (apt-get install binutils)")
    return tool


def scan_library(path: Path) -> Finding | None:
    """Disassemble `path` and return what it holds beyond the baseline, or None if nothing."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # the patterns are x86's; elsewhere the build flags alone keep it generic
    proc = subprocess.run(
        [_objdump(), "-d", "--no-show-raw-insn", os.fspath(path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        raise EngineError(f"objdump could not read {path}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    count = 0
    examples: dict[str, None] = {}
    for line in proc.stdout.splitlines():
        _, tab, instruction = line.partition(":\t")
        if not tab:
            continue
        instruction = instruction.strip()
        if _BEYOND.search(instruction):
            count += 1
            if len(examples) < 4:
                examples[instruction.split()[0]] = None
    return Finding(path.name, count, tuple(examples)) if count else None


def scan(paths: Iterable[Path]) -> list[Finding]:
    """Scan each distinct library once: wheels hold the same file under several names (.so, .so.0, ...)."""
    distinct: dict[str, Path] = {}
    for path in paths:
        distinct.setdefault(_sha256(path), path)
    return [finding for path in distinct.values() if (finding := scan_library(path)) is not None]


def installed_libraries() -> list[Path]:
    """The shared libraries of the installed llama_cpp package, found without loading them."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"llama-cpp-python is not installed: {REBUILD_HINT}")
    root = Path(next(iter(spec.submodule_search_locations)))
    libs = sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix in (".so", ".dylib") or ".so." in p.name))
    if not libs:
        raise EngineError(f"the installed llama-cpp-python in {root} has no shared libraries: {REBUILD_HINT}")
    return libs


# --- building and installing ---------------------------------------------------------------


def _wheel_in(directory: Path) -> Path | None:
    wheels = sorted(directory.glob("llama_cpp_python-*.whl"))
    return wheels[0] if wheels else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


_STEP = re.compile(r"\[(\d+)/(\d+)\]")


def build_wheel(dest: Path, *, progress: bool = True) -> Path:
    """Compile llama-cpp-python with our flags into `dest` (about 5 minutes on 2 cores).

    pip's own cache is bypassed both ways: a cached native wheel is never taken, and ours
    is not put there to be handed to a pip that builds with other flags.
    """
    from tqdm import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dest, prefix="build."))
    log_path = dest / "build.log"
    env = {**os.environ, "CMAKE_ARGS": " ".join(cmake_args()), "FORCE_CMAKE": "1"}
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-cache-dir",
        "--no-binary",
        ENGINE_PACKAGE,
        "--progress-bar",
        "off",
        "-v",
        "-w",
        os.fspath(work),
        f"{ENGINE_PACKAGE}=={ENGINE_VERSION}",
    ]
    try:
        with (
            open(log_path, "w") as log_file,
            tqdm(
                total=None,
                desc="building llama.cpp",
                unit="step",
                file=sys.stderr,
                disable=not progress,
                mininterval=0.5 if sys.stderr.isatty() else 30,  # a CI log gets a line every 30 s, not hundreds
            ) as bar,
        ):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                log_file.write(line)
                if match := _STEP.search(line):
                    done, total = int(match[1]), int(match[2])
                    bar.total = total
                    bar.update(done - bar.n)  # unlike refresh(), keeps to mininterval
            code = proc.wait()
        if code != 0:
            raise EngineError(f"building llama-cpp-python failed (exit {code}): see {log_path}")
        wheel = _wheel_in(work)
        if wheel is None:
            raise EngineError(f"building llama-cpp-python produced no wheel: see {log_path}")
        findings = scan_wheel(wheel)
        if findings:
            raise EngineError(f"the engine just built holds instructions beyond {baseline()}: {findings[0]}")
        final = dest / wheel.name
        os.replace(wheel, final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scan_wheel(wheel: Path) -> list[Finding]:
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith((".so", ".dylib")) or ".so." in n]
        for name in names:
            archive.extract(name, tmp)
        return scan(Path(tmp) / name for name in names)


def _marker_path() -> Path:
    return Path(sys.prefix) / MARKER_NAME


def read_marker() -> dict[str, str]:
    try:
        data = json.loads(_marker_path().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _installed_fingerprint() -> str:
    """A hash of the installed libraries, to tell our build from one pip put there later."""
    digest = hashlib.sha256()
    for lib in installed_libraries():
        digest.update(lib.name.encode())
        digest.update(_sha256(lib).encode())
    return digest.hexdigest()


def installed_is_ours() -> bool:
    marker = read_marker()
    if marker.get("key") != build_key():
        return False
    try:
        return marker.get("fingerprint") == _installed_fingerprint()
    except EngineError:
        return False


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version(ENGINE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_engine(*, rebuild: bool = False, progress: bool = True) -> str:
    """Make the current environment's llama-cpp-python our portable, checked build.
    Returns one line saying what was done."""
    if not rebuild and installed_is_ours():
        return f"engine: llama-cpp-python {ENGINE_VERSION}, portable build for {baseline()}, already installed"
    dest = cache_dir()
    wheel = None if rebuild else _wheel_in(dest)
    if wheel is not None and scan_wheel(wheel):  # a cache is a claim, not a proof
        wheel.unlink()
        wheel = None
    if wheel is None:
        for stale in dest.glob("*.whl"):
            stale.unlink()
        wheel = build_wheel(dest, progress=progress)
    code = subprocess.call(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", os.fspath(wheel)]
    )
    if code != 0:
        raise EngineError(f"installing {wheel.name} failed (exit {code})")
    findings = scan(installed_libraries())
    if findings:
        raise EngineError(f"the installed engine holds instructions beyond {baseline()}: {findings[0]}")
    marker = {"key": build_key(), "wheel": wheel.name, "fingerprint": _installed_fingerprint(), "baseline": baseline()}
    _marker_path().write_text(json.dumps(marker, indent=2) + "\n")
    return f"engine: llama-cpp-python {ENGINE_VERSION} built for {baseline()} and installed from {wheel}"


def check_installed() -> list[Finding]:
    """Scan the installed engine; raises EngineError if there is none."""
    return scan(installed_libraries())


# --- how a process died ----------------------------------------------------------------------

_SIGNAL_WORDS = {
    signal.SIGILL: "illegal instruction",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "arithmetic error",
    signal.SIGABRT: "aborted",
}


def signal_of(returncode: int) -> signal.Signals | None:
    """The signal behind a child's exit: -N from Popen, or 128+N from a shell or our wrappers."""
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 128 + 65 else 0
    with contextlib.suppress(ValueError):
        return signal.Signals(number) if number else None
    return None


def describe_exit(returncode: int) -> str:
    """'exited with code 1', or 'was killed by SIGILL (illegal instruction)'."""
    sig = signal_of(returncode)
    if sig is None:
        return f"exited with code {returncode}"
    words = _SIGNAL_WORDS.get(sig)
    return f"was killed by {sig.name}" + (f" ({words})" if words else "")


def crash_remedy(returncode: int) -> str:
    """What a person can do about an engine that died this way."""
    sig = signal_of(returncode)
    if sig == signal.SIGILL:
        return f"it was built for another CPU; {REBUILD_HINT}"
    if sig in (signal.SIGSEGV, signal.SIGBUS):
        return f"the model file or the engine may be broken; {REBUILD_HINT}, or check the model file"
    if sig == signal.SIGKILL:
        return "the machine may be out of memory (the kernel's OOM killer); try a smaller model"
    return "see its output above"


def describe_engine_crash(returncode: int) -> str:
    """One line: 'the llama.cpp engine crashed with SIGILL (illegal instruction): ...'."""
    sig = signal_of(returncode)
    if sig is None:
        return f"the llama.cpp engine exited with code {returncode}: see its output above"
    words = _SIGNAL_WORDS.get(sig)
    return (
        f"the llama.cpp engine crashed with {sig.name}"
        + (f" ({words})" if words else "")
        + f": {crash_remedy(returncode)}"
    )
