"""The wheel ships the published schema (runner/spec/workflow.schema.json is a symlink to
schemas/workflow.schema.json: a wheel must carry the file, not the link)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_schema_and_the_console_script(tmp_path: Path) -> None:
    # Build from a copy: a build writes build/ and *.egg-info next to the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "runner", "schemas"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        else:
            shutil.copy2(ROOT / name, source / name)
    assert (source / "runner" / "spec" / "workflow.schema.json").is_symlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("lmflow_runner-*.whl")  # the distribution lmflow-runner
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("lmflow_runner/spec/workflow.schema.json")
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt")))
    assert shipped == (ROOT / "schemas" / "workflow.schema.json").read_bytes()
    assert {
        "lmflow_runner/api.py",
        "lmflow_runner/commands/run.py",
        "lmflow_runner/py.typed",
        "lmflow_runner/report.html.j2",  # lmflow report's page
    } <= set(names)
    # The old import name, for the transition (runner/_old_name.py).
    assert "runner/_old_name.py" in names
    assert "lmflow = lmflow_runner.cli:main" in entry_points.decode()
    assert "lmflow = lmflow_runner.pytest_plugin" in entry_points.decode()
