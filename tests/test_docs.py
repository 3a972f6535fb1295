"""docs/your-own-model.md runs as written: its Python blocks in order in one namespace, its bash
commands from the project root (writing under runs/docs)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "your-own-model.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


def test_python_blocks_run(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for code in blocks("python"):
        exec(compile(code, "docs/your-own-model.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "it lacks propose, log_joint, q_parameters, p_parameters, log_proposal" in out
    assert "(exact, n=2000)" in out


def test_bash_commands_run():
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmds = [line.strip() for block in blocks("bash") for line in block.splitlines() if line.strip()]
    assert len(cmds) >= 4
    for cmd in cmds:
        args = shlex.split(cmd)
        if args[0] == "python":
            args[0] = sys.executable
        r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
