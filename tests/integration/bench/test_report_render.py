"""scripts/bench/report re-renders BENCHMARKS.md from saved results, keeping History."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "docs" / "benchmarks" / "results.json"


def test_render_from_saved_results_writes_every_section_and_keeps_history(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# old\n\n## History\n\n| date | commit | change | what moved |\n| --- | --- | --- | --- |\n"
                      "| then | abc | kept by hand | x → y |\n")
    result = subprocess.run(
        [sys.executable, "scripts/bench/report_main.py", "--render", str(RESULTS),
         "--output", str(output), "--plots-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = output.read_text()
    for heading in ("## The bars (issue 5)", "## 1. The physical limit", "## 2. The worker", "## History"):
        assert heading in text
    assert "| then | abc | kept by hand | x → y |" in text
    assert sorted(p.name for p in tmp_path.glob("*.png"))


def _render(results_json: Path, output: Path, plots_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, "scripts/bench/report_main.py", "--render", str(results_json),
         "--output", str(output), "--plots-dir", str(plots_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return output.read_text()


def test_rendering_a_run_again_keeps_its_comparison_with_the_run_before(tmp_path):
    """The "Changes since the previous report" table survives --render of the same run."""
    import json

    earlier = json.loads(RESULTS.read_text())
    earlier["meta"]["started"] = "2000-01-01 00:00:00 UTC"
    earlier["meta"]["git"]["commit"] = "e0e0e0e"
    earlier.pop("previous", None)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "results.json").write_text(json.dumps(earlier))
    later = json.loads(RESULTS.read_text())
    later["meta"]["started"] = "2000-01-02 00:00:00 UTC"
    later.pop("previous", None)
    later_path = tmp_path / "later.json"
    later_path.write_text(json.dumps(later))
    output = tmp_path / "BENCHMARKS.md"

    first = _render(later_path, output, plots)
    assert "Previous: 2000-01-01 00:00:00 UTC, commit e0e0e0e" in first
    # plots/results.json is now the later run; rendering it again compares with the same run before.
    again = _render(plots / "results.json", output, plots)
    assert "Previous: 2000-01-01 00:00:00 UTC, commit e0e0e0e" in again
    heading = "## Changes since the previous report"
    assert again.split(heading)[1] == first.split(heading)[1]
