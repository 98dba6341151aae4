"""`reports/reproduction.md`: the reproduction report, assembled from each experiment's own section."""
from __future__ import annotations

import os
from pathlib import Path

PARTS = (
    ("reproduction_rfam.md", "RFM vs RFAM (`rba reproduce rfam`)"),
    ("reproduction_grokking.md", "GrokAlign and grokking speed (`rba reproduce grokking`)"),
    ("reproduction_grokalign_tabular.md", "GrokAlign-MLP vs MLP robustness on tabular data (`rba reproduce grokalign-tabular`)"),
)


def write_index(out_dir: str | os.PathLike = "reports") -> Path:
    """Concatenate the experiment sections that exist (headings demoted one level) into reproduction.md."""
    out = Path(out_dir)
    lines = ["# Reproducing the seed paper with robustbench-align", "",
             "Each section is written by its command; settings are recorded in each section. "
             "Where our numbers go against the paper, the section says so.", ""]
    for fname, title in PARTS:
        path = out / fname
        if not path.exists():
            lines += [f"## {title}", "", f"Not run yet: run the command to produce `{fname}`.", ""]
            continue
        body = path.read_text(encoding="utf-8").splitlines()
        if body and body[0].startswith("# "):
            body = body[1:]
        lines += [f"## {title}", ""]
        lines += [("#" + ln) if ln.startswith("#") else ln for ln in body]
        lines.append("")
    target = out / "reproduction.md"
    target.write_text("\n".join(lines), encoding="utf-8")
    return target
