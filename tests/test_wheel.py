"""The package installs from a wheel into a fresh virtual environment (not editable) and its
`wakesleep` command trains.

No network: the wheel is built without build isolation (setuptools from this environment), and
the fresh environment reaches the dependencies (torch, numpy, ...) through a `.pth` file naming
this environment's site-packages.  A directory named in a `.pth` file is put on `sys.path` but its
own `.pth` files are not processed, so an editable install of wakesleep here (its `.pth` points
at src/) does not leak into the fresh environment; the test checks that `wakesleep` is imported
from the fresh environment's site-packages all the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Left out of the copy the wheel is built from: environments, build output, caches, runs.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "site", "runs", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".whl", ".gl"
)


def run(args, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{args}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_installs_into_a_fresh_environment_and_its_command_trains(tmp_path):
    # build from a copy of the tree, so that the build leaves nothing (build/, *.egg-info) in it
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, tree])
    (wheel,) = dist.glob("wakesleep-*.whl")

    # the wheel holds the package and its metadata only: every module of src/wakesleep, no tests, no data
    names = zipfile.ZipFile(wheel).namelist()
    meta = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    files = sorted(set(names) - set(meta))
    assert files and all(n.startswith("wakesleep/") and n.endswith(".py") for n in files), files
    src = ROOT / "src"
    modules = sorted(p.relative_to(src).as_posix() for p in (src / "wakesleep").rglob("*.py") if "__pycache__" not in p.parts)
    assert files == modules, set(files) ^ set(modules)

    # a fresh environment, without pip of its own: this environment's pip installs into it
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel])

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["OMP_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    probe = "import sys, wakesleep; print(wakesleep.__file__); print(*sys.path, sep='\\n')"
    where, *path = run([py, "-c", probe], cwd=tmp_path, env=env).stdout.splitlines()
    assert Path(where).resolve().is_relative_to(site.resolve()), f"wakesleep imported from {where}, not {site}"
    # this environment's editable install (if any) stays out: its .pth is not processed there
    here = Path(sysconfig.get_paths()["purelib"])
    editable = {line.strip() for pth in here.glob("__editable__*.pth") for line in pth.read_text().splitlines()}
    assert not {p for p in editable if p and not p.startswith("import")} & set(path), path

    command = venv / "bin" / "wakesleep"
    assert "train" in run([command, "--help"], cwd=tmp_path, env=env).stdout
    run_dir = tmp_path / "run"
    run(
        [
            command,
            "train",
            "--algorithm",
            "rws",
            "--dataset",
            "digits",
            "--layers",
            "5",
            "--epochs",
            "1",
            "--test-k",
            "10",
            "--valid-k",
            "10",
            "--no-progress",
            "--run-dir",
            run_dir,
        ],
        cwd=tmp_path,
        env=env,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["test_k"] == 10 and summary["test_log_likelihood"] < 0
