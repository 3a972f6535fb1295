"""The README's commands run as written.

`make test` is the command that runs this suite, so it is not run from inside it (CI runs it);
every other command in the README's bash blocks is run in a scratch directory, and its Python
block is executed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(line)
    return out


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


def test_readme_starts_with_the_two_make_commands():
    first = commands()[:2]
    assert first == ["make run", "make test"]


def test_make_run(tmp_path):
    """`make run` (set-up already done by `make test`) trains, evaluates and writes pictures."""
    r = subprocess.run(["make", "run"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "test log-likelihood:" in r.stdout and "samples:" in r.stdout
    assert (ROOT / "runs" / "digits-rws" / "samples.png").is_file()


def test_cli_commands_run_as_written(tmp_path):
    cmds = [c for c in commands() if not c.startswith("make ")]
    assert cmds, "the README shows command-line examples"
    for cmd in cmds:
        if cmd.startswith("torchrun"):
            continue  # run by the distributed tests, which need their own process setup
        r = subprocess.run(shlex.split(cmd), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def test_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), {})
