"""The cost tables of README.md and docs/infrastructure.md show the numbers `inferstack plan`
computes for the repo's stacks, so neither can drift from the other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferstack.plan.cost import estimate
from inferstack.plan.render import make_plan

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))
DOCS = ("README.md", "docs/infrastructure.md")
COLUMNS = {
    "at rest": "usd_per_hour_rest",
    "at max scale": "usd_per_hour_max",
    "ceiling": "usd_per_hour_ceiling",
}


def cost_table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (by stack) of the first table whose header has an ``at rest`` column."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == "stack" and any(c.startswith("at rest") for c in cells):
            rows = {}
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                values = [c.strip() for c in row.strip().strip("|").split("|")]
                rows[values[0]] = values
            return cells, rows
    raise AssertionError("no cost table (a header `| stack | at rest ...`)")


def amount(cell: str) -> float:
    """The first ``$X.XX`` of a cell; a cell that starts with 0 is zero."""
    found = re.search(r"\$([0-9]+\.[0-9]{2})", cell)
    if found:
        return float(found.group(1))
    assert re.match(r"^\**0\b", cell), f"no amount in {cell!r}"
    return 0.0


@pytest.fixture(scope="module")
def estimates() -> dict[str, object]:
    return {s: estimate(make_plan(s, ROOT).snapshot) for s in STACKS}


@pytest.mark.parametrize("doc", DOCS)
def test_cost_table_matches_the_plans(doc: str, estimates: dict[str, object]) -> None:
    header, rows = cost_table((ROOT / doc).read_text())
    assert set(rows) == set(STACKS), f"{doc}: rows {sorted(rows)} vs stacks {STACKS}"
    checked = 0
    for col, title in enumerate(header[1:], 1):
        attr = next((a for prefix, a in COLUMNS.items() if title.startswith(prefix)), None)
        if attr is None:
            continue
        for stack in STACKS:
            shown = amount(rows[stack][col])
            planned = round(getattr(estimates[stack], attr), 2)
            assert shown == planned, (
                f"{doc}: {stack} {title!r} shows ${shown:.2f}, the plan says ${planned:.2f}"
            )
            checked += 1
    assert checked >= 2 * len(STACKS), f"{doc}: expected at-rest and at-max columns, got {header}"


def test_the_table_parser_sees_a_drift() -> None:
    text = "| stack | at rest | at max scale |\n|---|---|---|\n| dev | ~$0.75/h | ~$1.27/h |\n"
    _, rows = cost_table(text)
    assert amount(rows["dev"][1]) == 0.75 and amount(rows["dev"][2]) == 1.27
    with pytest.raises(AssertionError):
        amount("about a dollar")
