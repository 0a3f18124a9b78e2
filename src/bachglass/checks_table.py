"""The report of the science checks: results/science_checks.md, new verdicts and old side by side."""

from bachglass.checks import Check


def table(checks: list[Check], excluded: str = "none", legacy: list[Check] | None = None) -> str:
    """Format the checks as a Markdown table: claim, criterion, measured numbers, PASS/FAIL.

    ``excluded`` (fits.nc's ``excluded_runs``) names the diverged runs that no fit used. With
    ``legacy`` (the same checks under the first criteria) each row shows the old verdict beside the
    new one, and a second table gives the old criteria and what they were judged on.
    """
    old = legacy is not None
    head = "| # | claim (paper) | criterion | measured | result |" + (" old criteria |" if old else "")
    rows = [head, "|---|---|---|---|---|" + ("---|" if old else "")]
    for i, c in enumerate(checks):
        row = f"| {c.number} | {c.claim} | {c.criterion} | {c.measured} | **{c.verdict}** |"
        rows.append(row + (f" {legacy[i].verdict} |" if old else ""))
    if excluded != "none":
        rows += ["", f"Left out of every fit (diverged): {excluded}."]
    if old:
        first = "Old criteria (before calibration; docs/calibration.md), judged on the same fits"
        rows += ["", f"{first} with the first phase rule:", ""]
        rows += ["| # | old criterion | measured | result |", "|---|---|---|---|"]
        rows += [f"| {c.number} | {c.criterion} | {c.measured} | {c.verdict} |" for c in legacy]
    return "\n".join(rows) + "\n"
