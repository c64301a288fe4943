"""The dependency arrows of docs/design.md, checked on the source: lower layers never reach up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import xmppspy

PACKAGE = Path(xmppspy.__file__).parent

# module -> the xmppspy modules and the outside packages it may import
ALLOWED: dict[str, set[str]] = {
    "xml": {"lxml"},
    "reasons": {"trio"},
    "events": {"xml", "lxml"},
    "namespaces": {"events"},
    "parser": {"events", "namespaces", "xml"},
    "redact": {"events", "parser"},
    "session": {"events", "namespaces", "parser", "redact"},
    "filters": {"events", "namespaces", "lxml"},
    "selection": {"events", "filters"},
    "capture": {"__init__", "events", "parser", "xml", "orjson"},
    "render": {"events", "selection", "xml", "lxml", "rich"},
    "stats": {"events", "filters", "namespaces", "selection"},
    "stats_view": {"events", "stats", "rich", "orjson"},
    "relay": {"events", "parser", "reasons", "session", "trio"},
    "mock": {"events", "namespaces", "parser", "redact", "lxml"},
    "serve": {"capture", "events", "mock", "relay", "render", "selection", "trio", "rich"},
    "client": {"events", "namespaces", "parser", "reasons", "trio", "lxml"},
    "certs": {"cryptography"},
    "replay": {"events", "parser", "lxml"},
    "cli.common": {"capture", "events", "filters", "selection", "typer", "rich"},
    "cli.proxy_command": {
        "__init__",
        "capture",
        "certs",
        "cli.common",
        "events",
        "filters",
        "parser",
        "relay",
        "render",
        "selection",
        "trio",
        "typer",
        "rich",
    },
    "cli.replay_command": {
        "capture",
        "cli.common",
        "client",
        "events",
        "filters",
        "parser",
        "render",
        "replay",
        "selection",
        "trio",
        "typer",
        "rich",
    },
    "cli.stats_command": {"capture", "cli.common", "stats", "stats_view", "typer", "rich"},
    "cli.serve_command": {"__init__", "capture", "cli.common", "mock", "serve", "trio", "typer"},
    "cli.ca_command": {"certs", "cli.common", "typer", "rich"},
    "cli": {
        "__init__",
        "cli.ca_command",
        "cli.proxy_command",
        "cli.replay_command",
        "cli.serve_command",
        "cli.stats_command",
        "typer",
    },
    "__main__": {"cli"},
    "__init__": set(),
}
THIRD_PARTY = {"trio", "rich", "typer", "lxml", "orjson", "cryptography"}


def module_name(path: Path) -> str:
    """``cli/common.py`` is ``cli.common``; a subpackage's ``__init__.py`` is the subpackage."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if len(parts) > 1 and parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str:
    """``xmppspy.cli.common.fail`` -> ``cli.common``: the longest prefix that is a module."""
    parts = name.split(".")[1:]
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) or "__init__"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module.partition(".")[0] == "xmppspy":
                names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            top = name.partition(".")[0]
            if top == "xmppspy":
                found.add(resolve(name))
            elif top in THIRD_PARTY:
                found.add(top)
    return found


def test_every_module_has_a_place_in_the_layers() -> None:
    assert set(MODULES) == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_module_imports_only_lower_layers(module: str) -> None:
    assert imports(MODULES[module]) <= ALLOWED[module]


@pytest.mark.parametrize(
    "heavy",
    [
        "cryptography",  # about 12 MB of RSS: only a certificate may load it
        "pydantic",  # about 7 MB, loaded by typer >= 0.29 (pyproject.toml pins it below)
    ],
)
@pytest.mark.parametrize("command", ["version", "stats", "proxy"])
def test_commands_run_without_loading(heavy: str, command: str) -> None:
    """The 60 MB memory target has no room for these (docs/performance.md).

    ``proxy`` runs its whole start-up and stops at a listening port that is taken."""
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = {
            "version": ["version"],
            "stats": ["stats", str(PACKAGE.parent / "captures" / "prosody-chat.jsonl")],
            "proxy": ["proxy", "-u", "127.0.0.1:9", "-l", f"127.0.0.1:{port}", "-q"],
        }[command]
        code = (
            "import sys, typer.main; from xmppspy.cli import app\n"
            "try:\n"
            f"    typer.main.get_command(app).main({argv!r}, standalone_mode=False)\n"
            "except SystemExit:\n"
            "    pass\n"
            f"print({heavy!r} in sys.modules)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert done.stdout.splitlines()[-1:] == ["False"], done.stdout + done.stderr
    if command == "proxy":
        assert "cannot listen" in done.stderr
