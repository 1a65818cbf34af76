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
