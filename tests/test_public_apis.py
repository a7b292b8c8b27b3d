"""roundtable uses AutoGen and Chainlit through their public APIs only: no private module, no
private name imported, no private attribute read or written. An upgrade that moves a private
part then cannot break us silently, because we never stood on one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "roundtable"
LIBRARIES = ("autogen_core", "autogen_ext", "autogen_agentchat", "chainlit")
#: Underscored names that are public: SQLAlchemy documents `Row._mapping`; `os._exit` is the stdlib's.
PUBLIC_UNDERSCORED = {"_mapping", "_exit"}
#: A private module of one of the libraries, spelled in a string (a logger's name, say).
PRIVATE_PATH = re.compile(rf"\b(?:{'|'.join(LIBRARIES)})(?:\.\w+)*\._\w+")


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(LIBRARIES):
            module = node.module or ""
            if any(private(part) for part in module.split(".")):
                found.append(f"{where}:{node.lineno}: imports the private module {module}")
            found += [
                f"{where}:{node.lineno}: imports the private name {a.name}" for a in node.names if private(a.name)
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(LIBRARIES) and any(private(part) for part in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno}: imports the private module {alias.name}")
        elif isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in PUBLIC_UNDERSCORED:
            # Our own objects' private parts are ours (self, cls); anything else's are not.
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{where}:{node.lineno}: reads or writes the private attribute {node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and PRIVATE_PATH.search(node.value):
            found.append(f"{where}:{node.lineno}: names the private module {PRIVATE_PATH.search(node.value)[0]}")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


def test_nothing_in_src_touches_a_private_part_of_autogen_or_chainlit() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20  # the whole package, not an empty glob
    found = [line for path in files for line in findings(path)]
    assert found == [], "\n".join(found)


def test_the_check_finds_each_kind_of_private_use(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from autogen_core._serialization import SerializationRegistry\n"
        "from autogen_ext.runtimes.grpc import _constants\n"
        "import autogen_ext.runtimes.grpc._worker_runtime\n"
        "runtime._subscription_manager = None\n"
        "name = 'autogen_ext.tools.mcp._actor'\n"
        "self._mine = 1\n"
        "row._mapping\n",
        encoding="utf-8",
    )
    found = findings(sample)
    assert [line.split(": ", 1)[1] for line in found] == [
        "imports the private module autogen_core._serialization",
        "imports the private name _constants",
        "imports the private module autogen_ext.runtimes.grpc._worker_runtime",
        "reads or writes the private attribute _subscription_manager",
        "names the private module autogen_ext.tools.mcp._actor",
    ]
