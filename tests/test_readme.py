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


def test_the_readme_quotes_its_measured_numbers_through_marks(text):
    """The times, job and test counts, table values and benchmark results are marked (so checked), not typed."""
    specs = [m["spec"] for m in readme.VALUE.finditer(text)]
    files = {spec.split("|")[1] for spec in specs if spec[:2] in ("j|", "c|")}
    assert {"benchmarks/results/fresh_clone_dag.json", "benchmarks/results/fresh_clone_tests.json",
            "benchmarks/results/slurm_cluster.json", "benchmarks/results/paper_step_cpu.json",
            "benchmarks/results/train_throughput.json", "benchmarks/results/kill_resume.json",
            "reference/quick/figure4.csv"} <= files
    assert sum(spec.startswith("t|") for spec in specs) >= 20
    pages = [p.read_text(encoding="utf-8") for p in readme.PAGES]
    assert {m["name"] for page in pages for m in readme.BLOCK.finditer(page)} == set(readme.BLOCKS)


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
    spec = "j|benchmarks/results/fresh_clone_dag.json|minutes|.1f"
    mark = next(m for m in readme.VALUE.finditer(text) if m["spec"] == spec)
    stale = text.replace(mark[0], f"<!--v {spec}-->18.0<!--/v-->", 1)
    _, problems = readme.render(stale)
    assert problems == [f"stale value '18.0', the file says {mark['text']!r} ({spec})"]
    fixed, _ = readme.render(stale)
    assert readme.render(fixed)[1] == []  # --write repairs it


def test_a_stale_block_and_a_false_claim_fail_the_check(text, monkeypatch):
    block = next(readme.BLOCK.finditer(text))
    _, problems = readme.render(text.replace(block["text"], block["text"] + "| an old row |\n", 1))
    assert problems == [f"stale block {block['name']!r}"]
    claim = "MNIST / OMNIGLOT stand-ins: the LSGM's NELBO is above its backbone's"
    assert claim in " ".join(text.split())
    monkeypatch.setitem(readme.CLAIMS, claim, lambda: False)  # as if the tables said the opposite
    assert readme.render(text)[1] == [f"false claim: {claim!r} (the committed tables say otherwise)"]


def test_the_length_of_one_list_is_its_items_not_one():
    """``KEY|len`` on a JSON list counted the list itself (the README printed "1 2-node trainings" for six): the
    check refuses it and names ``KEY.*|len``, which counts the items."""
    with pytest.raises(readme.StaleError, match=r"multi_node_jobs is one list; aggregate its items with "
                                                r"multi_node_jobs\.\*\|len"):
        readme.value_of("j|benchmarks/results/slurm_cluster.json|multi_node_jobs|len")
    assert readme.value_of("j|benchmarks/results/slurm_cluster.json|multi_node_jobs.*|len") == "6"
