"""Imports point one way, down the data flow (design section 6): the checks know nothing of the
pipeline, the manifest or the CLI, and only cli.py prints or exits."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "archcheck"
UPSTREAM = {"pipeline", "manifest", "cli", "api", "reports", "worker", "state", "runner",
            "drills", "coverage", "ledger", "plans"}
# the generic pipeline reaches the databases only through the scanners package's face (ScanConfig,
# scan_handoff, DatabasePolicy) and a backup set's two methods (scan_config, cross_check)
GENERIC = ["pipeline.py", "runner.py", "worker.py", "stream_channel.py", "api.py", "layers/stream.py",
           "layers/decoding.py"]
DATABASE_MODULES = {"sqlite", "wal", "pgmanifest", "innodb", "postgres"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            names.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("archcheck."):
            names.add(node.module.split(".")[1])
    return names


def test_layers_and_sources_do_not_reach_up():
    for folder in ("layers", "sources", "scanners"):
        for path in (SRC / folder).glob("*.py"):
            assert not imported_modules(path) & UPSTREAM, path


def test_only_the_cli_prints_or_exits():
    for path in SRC.rglob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text())
        calls = {node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        attrs = {f"{node.func.value.id}.{node.func.attr}" for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and isinstance(node.func.value, ast.Name)}
        assert "print" not in calls and not {"sys.exit", "os._exit"} & attrs, path


def test_the_generic_pipeline_names_no_database_module():
    for name in GENERIC:
        tree = ast.parse((SRC / name).read_text())
        modules = {(node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        named = {part for module in modules for part in module.split(".")} & DATABASE_MODULES
        assert not named, (name, named)
