"""The package's shape: no import cycle among lsgm modules (lazy imports inside functions included), and no module
over the size limit (450 lines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lsgm"
LIMIT = 450  # lines


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {n.lineno for child in node.body for n in ast.walk(child) if hasattr(n, "lineno")}
    return lines


def imports_of(name: str) -> set[str]:
    """The lsgm modules one module imports, at the top or inside functions (not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    out = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("lsgm"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            out |= subs or ({node.module} & set(MODULES))
    return out - {name}


def cycles() -> list[list[str]]:
    """The import graph's cycles (Tarjan's strongly connected components of more than one module)."""
    graph = {name: imports_of(name) for name in MODULES}
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_lsgm_modules():
    assert cycles() == []


def test_no_module_over_the_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in MODULES.values()}
    over = {path: n for path, n in sizes.items() if n > LIMIT}
    assert over == {}, f"modules over {LIMIT} lines (split them): {over}"


# ----------------------------------------------------------------------------- docs/ARCHITECTURE.md
ALWAYS_SEARCHED = ("config.yaml", "workflow/schemas/config.schema.yaml", "lsgm/report/published.yaml")
BACKTICKED = re.compile(r"`([^`]+)`")
FILE = re.compile(r"^[\w./-]+\.(?:py|yaml|smk)$|^[\w./-]+/$")
NAME = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)?$")


def where_do_i_change() -> list[str]:
    """The bullets of the "Where do I change ..." list of docs/ARCHITECTURE.md."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("### Where do I change ...", 1)[1].split("\n## ", 1)[0]
    return ["- " + b.strip() for b in section.split("\n- ")[1:]]


def unresolved(bullet: str) -> list[str]:
    """What a bullet names that is not there: a file or folder that does not exist, a name (``TABLE6_COLUMNS``,
    ``Run.launcher``, a config key) found in none of the files the bullet names (nor config.yaml, the schema,
    published.yaml)."""
    tokens = BACKTICKED.findall(bullet)
    files = [t for t in tokens if FILE.match(t)]
    missing = [f for f in files if not (ROOT / f).exists()]
    texts = [p.read_text(encoding="utf-8") for f in (*files, *ALWAYS_SEARCHED) if (p := ROOT / f).is_file()]
    texts += [p.read_text(encoding="utf-8") for f in files if (ROOT / f).is_dir() for p in (ROOT / f).rglob("*.py")]
    for name in (t for t in tokens if NAME.match(t) and not FILE.match(t)):
        attr = re.escape(name.rsplit(".", 1)[-1])  # ``Run.launcher``: defined as a method or field of a class
        word = re.compile(rf"\bdef {attr}\b|^\s+{attr}\s*[:=]" if "." in name else rf"\b{attr}\b", re.M)
        if not any(word.search(t) for t in texts):
            missing.append(name)
    return missing


def test_every_where_do_i_change_entry_names_files_and_names_that_exist():
    """Walk the list: every file it names exists and every name it gives is in one of the files the entry names."""
    bullets = where_do_i_change()
    assert len(bullets) >= 10
    assert {b.split("**")[1]: unresolved(b) for b in bullets if unresolved(b)} == {}
