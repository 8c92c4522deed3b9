"""docs/ARCHITECTURE.md's import rules, read from the source (imports inside functions count).

No cycles among the product's modules; verb modules do not import each other; the CLI's commands
reach shared code through `cli.context`, never `cli.main`; the agent, the contract and the Lambda
bundle stay within what they may depend on; nothing in the product imports the local AWS,
the tests or the benchmarks.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("condor_annex", "stacks", "annex_sandbox", "tests", "bench", "lambda")
AWS_SDK = {"boto3", "botocore"}

VERBS = {
    "condor_annex.create",
    "condor_annex.status",
    "condor_annex.off",
    "condor_annex.extend",
    "condor_annex.setup",
}
"""One module per verb; each stands alone (shared code lives in the library modules)."""
BUNDLED = {"condor_annex.contract", "condor_annex.aws", "condor_annex.annex", "condor_annex"}
"""What stacks/lambda_code.py copies beside each Lambda handler."""
AGENT_MAY_USE = {
    "condor_annex.contract",
    "condor_annex.aws",
    "condor_annex.backoff",
    "condor_annex",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _product_files() -> list[Path]:
    files = sorted((ROOT / "condor_annex").rglob("*.py")) + sorted((ROOT / "stacks").glob("*.py"))
    return [*files, ROOT / "app.py", *sorted((ROOT / "lambda").glob("*/handler.py"))]


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (`from pkg import mod` names `pkg.mod`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): p for p in _product_files()}
GRAPH = {
    name: {i for i in _imports(path) if i in MODULES and i != name}
    for name, path in MODULES.items()
}
RAW = {name: _imports(path) for name, path in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def _module_of(imported: str) -> str:
    """`pkg.mod.func` (from a `from pkg.mod import func`) → `pkg.mod` when that is a module."""
    if imported in MODULES or "." not in imported:
        return imported
    parent = imported.rsplit(".", 1)[0]
    return parent if parent in MODULES else imported


def test_the_rules_see_the_whole_product():
    assert {"condor_annex.annex", "condor_annex.cli.main", "stacks.setup_stack"} <= set(MODULES)
    assert "lambda.lease.handler" in MODULES
    assert GRAPH["condor_annex.cli.main"], "imports were not read"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_product_never_imports_the_local_aws_the_tests_or_the_benchmarks():
    bad = {
        name: sorted(i for i in RAW[name] if _top(i) in {"annex_sandbox", "tests", "bench", "moto"})
        for name in MODULES
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_verbs_do_not_import_each_other():
    crossing = {verb: sorted(GRAPH[verb] & (VERBS - {verb})) for verb in VERBS}
    assert {k: v for k, v in crossing.items() if v} == {}


def test_only_the_cli_imports_the_cli_and_nothing_imports_its_entry_point():
    outside = {
        name: sorted(i for i in GRAPH[name] if i.startswith("condor_annex.cli"))
        for name in MODULES
        if not name.startswith("condor_annex.cli")
    }
    assert {k: v for k, v in outside.items() if v} == {}
    importers = [name for name, deps in GRAPH.items() if "condor_annex.cli.main" in deps]
    assert importers == []
    # Shared command helpers live in cli.context, which knows no command.
    assert not GRAPH["condor_annex.cli.context"] & {
        "condor_annex.cli.commands",
        "condor_annex.cli.render",
    }


def test_the_library_does_not_import_the_agent_and_the_agent_only_the_contract_aws_and_backoff():
    library = [n for n in MODULES if n.startswith("condor_annex") and ".agent" not in n]
    assert [n for n in library if any(i.startswith("condor_annex.agent") for i in GRAPH[n])] == []
    for name in (n for n in MODULES if n.startswith("condor_annex.agent")):
        allowed = {m for m in GRAPH[name] if m.startswith("condor_annex.agent")} | AGENT_MAY_USE
        assert GRAPH[name] <= allowed, (name, GRAPH[name] - allowed)
        third_party = (
            {_top(i) for i in RAW[name] if _top(i) not in sys.stdlib_module_names}
            - AWS_SDK
            - {"condor_annex"}
        )
        assert third_party == set(), (name, third_party)


def test_the_contract_is_standard_library_only():
    assert {_top(i) for i in RAW["condor_annex.contract"]} <= set(sys.stdlib_module_names)


def test_the_lambda_functions_import_only_what_their_bundle_carries():
    for name in (n for n in MODULES if n.startswith("lambda.")):
        first_party = {_module_of(i) for i in RAW[name] if _top(i) in FIRST_PARTY}
        assert first_party <= BUNDLED, (name, first_party - BUNDLED)
    for name in BUNDLED - {"condor_annex"}:
        assert GRAPH[name] <= BUNDLED, (name, GRAPH[name] - BUNDLED)
        third_party = {_top(i) for i in RAW[name] if _top(i) not in sys.stdlib_module_names}
        assert third_party <= AWS_SDK | {"condor_annex"}, (name, third_party)


def test_the_stacks_share_only_the_contract_with_the_product():
    for name in (n for n in MODULES if n.startswith("stacks") or n == "app"):
        product = {i for i in GRAPH[name] if i.startswith("condor_annex")}
        assert product <= {"condor_annex.contract", "condor_annex"}, (name, product)
