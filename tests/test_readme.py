"""The README's Python example runs as written."""
import re
from pathlib import Path


def test_readme_python_example_runs(capsys):
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) == 5
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "normal_alignment" in out
