"""How the README block runner (tests/integration/docs) turns blocks into one bash session.

It must find every runnable block under its heading, give the README's ports free
numbers without touching addresses or other numbers, background a foreground command
with a readiness wait, and run a Python block in the same shell.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.docs.readme_blocks import Block, Outcome, Step, readme_blocks, script

TEXT = """# Title

## First
```bash
echo one
```
```
not runnable
```
### Sub
```sh
echo two
```
```python
print("three")
```
```yaml
key: value
```
"""


def test_blocks_are_found_with_their_section_and_index():
    found = readme_blocks(TEXT)
    assert [(b.section, b.index, b.lang) for b in found] == [("First", 0, "bash"), ("Sub", 0, "bash"),
                                                           ("Sub", 1, "python")]
    assert found[2].text == 'print("three")\n'


def test_ports_are_replaced_but_not_addresses_or_longer_numbers():
    text = "curl 127.0.0.1:8001 --port 8001 --port 18001 --port 80010 v1.8001 redis://h:6380/0\n"
    out = script([Step(Block("S", 0, "bash", text))], {8001: 41000, 6380: 42000}, Path("/o"))
    assert "curl 127.0.0.1:41000 --port 41000 --port 18001 --port 80010 v1.8001 redis://h:42000/0" in out


def test_a_foreground_command_is_backgrounded_until_its_readiness_line():
    steps = [Step(Block("S", 0, "bash", "shunter up --port 8001\n"), foreground="^# Ctrl-C", ready_timeout_s=30,
                  then="source {log}.env")]
    out = script(steps, {8001: 41000}, Path("/o"))
    assert "{ shunter up --port 41000\n} > /o/foreground-0.log 2>&1 &" in out
    assert "readme_wait /o/foreground-0.log '^# Ctrl-C' $! 30" in out
    assert "source /o/foreground-0.log.env" in out


def test_a_python_block_runs_in_the_same_shell():
    out = script([Step(Block("S", 0, "python", "import os\nprint(os.environ['X'])\n"))], {}, Path("/o"))
    assert ".venv/bin/python - <<'README_PY'\nimport os\nprint(os.environ['X'])\nREADME_PY" in out


def test_failures_include_background_jobs_that_exited():
    outcome = Outcome(1, "", "README-FAILED (1): false\nREADME-JOB-EXITED:[2]- 123 Exit 1   worker &\n")
    assert outcome.failed == ["false", "[2]- 123 Exit 1   worker &"]
