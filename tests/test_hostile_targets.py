"""`module:attr` targets run user code: whatever that code does, the user gets one line and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

MODULE = textwrap.dedent('''
    def make():
        raise ValueError("no model today")

    class Evil:
        def __getattr__(self, name):
            raise RuntimeError("boom " + name)

    evil = Evil()
''')


@pytest.mark.parametrize("target, says", [
    ("hostile_mod:make", "calling the factory raised ValueError: no model today"),
    ("hostile_mod:evil", "cannot be used as a model (RuntimeError: boom"),
    ("broken_mod:anything", "cannot import 'broken_mod:anything' (ZeroDivisionError"),
])
def test_hostile_module_attr_is_one_line(tmp_path, target, says):
    (tmp_path / "hostile_mod.py").write_text(MODULE)
    (tmp_path / "broken_mod.py").write_text("x = 1 / 0\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "robustbench_align.cli", "evaluate", target, "-d", "iris", "--store", str(tmp_path / "s.sqlite"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rba: error:") and says in lines[0], r.stderr
    assert not (tmp_path / "s.sqlite").exists()


def test_help_and_readme_say_module_attr_runs_code():
    from pathlib import Path

    r = subprocess.run([sys.executable, "-m", "robustbench_align.cli", "evaluate", "--help"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200", "TERM": "dumb"})
    assert r.returncode == 0
    assert "trusted code only" in " ".join(r.stdout.split())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "imports that module, which runs its code" in " ".join(readme.split())
