"""`rba reproduce rfam` on a tiny setting: the report's tables are filled and the paired tests computed."""
import json
import math

import pytest

from robustbench_align.reproduce.rfam import run_rfam


@pytest.mark.slow
def test_rfam_reproduction_tiny(tmp_path):
    summary = run_rfam(["iris", "wine"], seeds=1, n_points=20, n_align=100, out_dir=tmp_path)
    tests = summary["tests"]
    assert set(tests["metric"]) >= {"test_acc", "normal_alignment", "effective_rank_normalized", "asr_paper@1", "asr_strong@1"}
    for col in ("rfm_mean", "rfam_mean", "diff_mean"):
        assert tests[col].map(math.isfinite).all(), col
    # two datasets: the paired t-test is computed wherever the differences are not all zero
    varying = tests[(tests["rfam_higher"] + tests["rfam_lower"]) > 0]
    assert len(varying) and varying["t_p"].between(0, 1).all()
    per_ds = summary["per_dataset"]
    assert len(per_ds) == 4 and per_ds["normal_alignment"].between(0, 1).all()
    # the strong ensemble is at least as strong as the paper's PGD on the same points (up to 1 point of 20)
    for e in ("0.1", "1", "2"):
        assert (per_ds[f"rob_strong@{e}"] <= per_ds[f"rob_paper@{e}"] + 5.0 + 1e-9).all()
    md = (tmp_path / "reproduction_rfam.md").read_text()
    assert "Against the paper's numbers" in md and "nan" not in md.split("## Per dataset")[0].lower().replace("wilcoxon", "")
    data = json.loads((tmp_path / "reproduction_rfam.json").read_text())
    assert isinstance(data["tests"][0]["rfm_mean"], float)
    assert (tmp_path / "reproduction_rfam.png").stat().st_size > 1000
