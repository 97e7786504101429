"""The distribution as a user installs it: the wheel holds one top-level package, `annserve` (with every
package folder of the repository in it), and installed into a fresh venv beside a project of the user's
own that has its own `app` and `indexes` packages, both import, each the right one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> the package it becomes (pyproject's package-dir).
MAPPED = {"app": "annserve", "indexes": "annserve.indexes"}

USER_PROJECT = """
import json, sys
import app, indexes                       # the user's own packages
import annserve, annserve.indexes         # ours, from the wheel
from annserve import Client
from annserve.indexes import INDEX_KINDS, create_index
import numpy as np

x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
index = create_index("flat", dim=8, metric="l2")
index.add(x, np.arange(50, dtype=np.int64))
ids, _ = index.search(x[:3], 1)
print(json.dumps({
    "app": app.WHOSE, "indexes": indexes.WHOSE,
    "annserve": annserve.__file__, "annserve.indexes": annserve.indexes.__file__,
    "client": Client.__module__, "kinds": sorted(INDEX_KINDS), "self_hits": ids[:, 0].tolist(),
}))
"""


def _copy_sources(dest: Path) -> Path:
    # The build writes build/ and *.egg-info beside the sources: a copy keeps them out of the working tree.
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for folder in MAPPED:
        shutil.copytree(ROOT / folder, dest / folder, ignore=junk)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("install")
    src = _copy_sources(tmp / "src")
    # No build isolation: the installed setuptools builds it, nothing is downloaded.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    (built,) = (tmp / "dist").glob("annserve-*.whl")
    return built


def test_wheel_holds_only_annserve_and_every_package_folder(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        record = z.read(f"{dist_info}/RECORD").decode()
        top_level = z.read(f"{dist_info}/top_level.txt").decode().split()
    assert top_level == ["annserve"]
    installed = {line.split(",")[0].split("/")[0] for line in record.splitlines() if line}
    assert installed == {"annserve", dist_info}
    # Every package folder of the repository is in the wheel (a missing one breaks `annserve serve`).
    wanted = {
        MAPPED[folder] + "".join("." + part for part in init.parent.relative_to(ROOT / folder).parts)
        for folder in MAPPED
        for init in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    packaged = {n[: -len("/__init__.py")].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert wanted <= packaged, (
        f"package folders missing from pyproject's packages: {sorted(wanted - packaged)}"
    )


def test_installed_beside_a_project_with_its_own_app_and_indexes(wheel, tmp_path):
    venv = tmp_path / "venv"
    # The system site-packages give the dependencies (nothing downloaded); the wheel goes into the venv.
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=60,
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )

    project = tmp_path / "project"
    for package in ("app", "indexes"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"WHOSE = 'the user {package}'\n")
    (project / "main.py").write_text(USER_PROJECT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A fresh install has no numba cache: the eager kernels would compile for ~45 s on first import.
    # What is tested here is which files are imported, not the kernels (tests/test_forest.py etc. are).
    env["NUMBA_DISABLE_JIT"] = "1"
    done = subprocess.run(
        [str(python), "main.py"], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["app"] == "the user app" and seen["indexes"] == "the user indexes"
    site = str(venv.resolve())
    # Ours came from the wheel in the venv, not from the repository's editable install.
    assert seen["annserve"].startswith(site) and seen["annserve.indexes"].startswith(site), seen
    assert str(ROOT) not in seen["annserve"]
    assert seen["client"] == "annserve.client" and {"flat", "hnswlib", "forest"} <= set(seen["kinds"])
    assert seen["self_hits"] == [0, 1, 2]

    # Outside the user's project there is no `app` or `indexes` to import: the wheel brought none.
    bare = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('app'), u.find_spec('indexes'))"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.stdout.split() == ["None", "None"], bare.stdout + bare.stderr
    # The console script is the wheel's too.
    script = subprocess.run(
        [str(venv / "bin" / "annserve"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0 and "serve" in script.stdout and "import" in script.stdout, script.stderr
