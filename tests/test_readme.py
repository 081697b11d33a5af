"""The README quotes no number that its committed file does not hold (scripts/readme.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_check", ROOT / "scripts" / "readme.py")
readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme)


@pytest.fixture(scope="module")
def text() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in readme.PAGES])
def test_every_number_the_readme_and_docs_quote_equals_its_file(page):
    _, problems = readme.render((ROOT / page).read_text(encoding="utf-8"))
    assert not problems, f"{page} is stale; run `python scripts/readme.py --write`:\n" + "\n".join(problems)


def test_the_pages_quote_their_measured_numbers_through_marks():
    """The times, job and test counts, table values and benchmark results are marked (so checked), not typed, on
    whichever page quotes them (the README, docs/, benchmarks/README.md); every generated block is used."""
    pages = [p.read_text(encoding="utf-8") for p in readme.PAGES]
    specs = [m["spec"] for page in pages for m in readme.VALUE.finditer(page)]
    files = {spec.split("|")[1] for spec in specs if spec[:2] in ("j|", "c|")}
    assert {"benchmarks/results/fresh_clone_dag.json", "benchmarks/results/fresh_clone_tests.json",
            "benchmarks/results/slurm_cluster.json", "benchmarks/results/paper_step_cpu.json",
            "benchmarks/results/train_throughput.json", "benchmarks/results/kill_resume.json",
            "benchmarks/results/prior_learning.json", "reference/quick/figure4.csv"} <= files
    assert sum(spec.startswith("t|") for spec in specs) >= 10
    assert {m["name"] for page in pages for m in readme.BLOCK.finditer(page)} == set(readme.BLOCKS)
    readme_specs = {m["spec"] for m in readme.VALUE.finditer(pages[0])}
    assert "j|benchmarks/results/fresh_clone_dag.json|minutes|.0f" in readme_specs


def test_the_slurm_page_quotes_the_plan_and_the_flop_count_through_marks():
    """docs/slurm.md: the `lsgm plan --profile slurm` output is a generated block, the FLOP count's published check
    is quoted from benchmarks/results/paper_flops.json; a stale one fails the check like the README's."""
    page = (ROOT / "docs" / "slurm.md").read_text(encoding="utf-8")
    assert readme.PAGES[0] == ROOT / "README.md" and ROOT / "docs" / "slurm.md" in readme.PAGES
    assert "plan-slurm" in {m["name"] for m in readme.BLOCK.finditer(page)}
    spec = "j|benchmarks/results/paper_flops.json|published_check.implied_utilisation|.0%"
    mark = next(m for m in readme.VALUE.finditer(page) if m["spec"] == spec)
    assert readme.render(page.replace(mark[0], f"<!--v {spec}-->99%<!--/v-->"))[1] == [
        f"stale value '99%', the file says {mark['text']!r} ({spec})"]


def test_one_stale_number_fails_the_check_and_is_named(text):
    spec = "j|benchmarks/results/fresh_clone_dag.json|minutes|.0f"
    mark = next(m for m in readme.VALUE.finditer(text) if m["spec"] == spec)
    stale = text.replace(mark[0], f"<!--v {spec}-->180<!--/v-->", 1)
    _, problems = readme.render(stale)
    assert problems == [f"stale value '180', the file says {mark['text']!r} ({spec})"]
    fixed, _ = readme.render(stale)
    assert readme.render(fixed)[1] == []  # --write repairs it


def test_a_stale_block_and_a_false_claim_fail_the_check(text, monkeypatch):
    block = next(readme.BLOCK.finditer(text))
    _, problems = readme.render(text.replace(block["text"], block["text"] + "| an old row |\n", 1))
    assert problems == [f"stale block {block['name']!r}"]
    flat = " ".join(text.split())
    claims = [claim for claim in readme.CLAIMS if claim in flat]
    assert claims, "the README states no checked claim"
    monkeypatch.setitem(readme.CLAIMS, claims[0], lambda: False)  # as if the tables said the opposite
    assert readme.render(text)[1] == [f"false claim: {claims[0]!r} (the committed tables say otherwise)"]


def test_the_length_of_one_list_is_its_items_not_one():
    """``KEY|len`` on a JSON list counted the list itself (the README printed "1 2-node trainings" for six): the
    check refuses it and names ``KEY.*|len``, which counts the items."""
    with pytest.raises(readme.StaleError, match=r"multi_node_jobs is one list; aggregate its items with "
                                                r"multi_node_jobs\.\*\|len"):
        readme.value_of("j|benchmarks/results/slurm_cluster.json|multi_node_jobs|len")
    record = __import__("json").loads((ROOT / "benchmarks/results/slurm_cluster.json").read_text())
    assert len(record["multi_node_jobs"]) >= 2
    assert readme.value_of("j|benchmarks/results/slurm_cluster.json|multi_node_jobs.*|len") == str(
        len(record["multi_node_jobs"]))


# ----------------------------------------------------------------------------- the front door
LINK = __import__("re").compile(r"\]\((?!https?://|#)([^)#\s]+)(#[^)]*)?\)")


def _prose_lines(page: Path) -> list[tuple[int, str]]:
    """The lines of a page outside code fences, tables and generated blocks (those are as wide as their content)."""
    out, fenced, block = [], False, False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("<!-- BEGIN "):
            block = True
        elif line.startswith("<!-- END "):
            block = False
        elif not (fenced or block or line.startswith("|")):
            out.append((number, readme.VALUE.sub(lambda m: m["text"], line)))
    return out


def test_the_readme_is_a_front_door():
    """About 150 lines; the reference lives in docs/ and benchmarks/README.md, which it links."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 160
    for page in ("docs/results.md", "docs/slurm.md", "docs/deviations.md", "docs/official_checkpoints.md",
                 "benchmarks/README.md", "docs/ARCHITECTURE.md"):
        assert f"]({page})" in text, page


@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in readme.PAGES])
def test_prose_lines_fit_120_characters_as_rendered(page):
    long = [f"{n}: {len(line)}" for n, line in _prose_lines(ROOT / page) if len(line) > 120]
    assert not long, f"{page}: prose lines over 120 characters (line: length): {long}"


@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in readme.PAGES])
def test_every_relative_link_resolves(page):
    path = ROOT / page
    missing = [m[1] for m in LINK.finditer(path.read_text(encoding="utf-8"))
               if not (path.parent / m[1]).exists()]
    assert not missing, f"{page}: links to nothing: {missing}"
