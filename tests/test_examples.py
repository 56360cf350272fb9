"""The Python example runs as written (small settings), so the docs' code cannot rot."""
import runpy
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "python_api.py"


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--rows", "120", "--epochs", "1", "--out", str(tmp_path)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "_score" in out
    assert (tmp_path / "run" / "config.json").exists()
