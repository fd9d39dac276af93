"""docker/install.sh, the one install path, and the two Dockerfiles that run it.

The slow test installs tamis for real into a fresh virtual environment (pip fetches
the build backend from the package index); the others are fast and offline.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
INSTALL_SH = DOCKER / "install.sh"
DOCKERFILES = {name: DOCKER / name for name in ("Dockerfile", "Dockerfile.gpu")}
DEFAULT_COMMAND = ["tamis", "demo", "--out", "/out/demo"]

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None, reason="docker/install.sh is a bash script"
)


def run_install(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def make_venv(path: Path) -> Path:
    """Create a venv that sees the packages of the running environment; return its python.

    `--system-site-packages` exposes the base interpreter's site-packages. When the
    tests themselves run in a venv, numpy & co. live in that venv instead, so its
    site-packages directories are appended through a .pth file: pip then finds the
    runtime dependencies installed and only installs tamis itself.
    """
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(path)],
        check=True,
        timeout=120,
    )
    python = path / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        outer = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
        Path(purelib, "_outer_env.pth").write_text("\n".join(outer) + "\n")
    return python


def copy_build_context(dest: Path) -> Path:
    """Copy the repository as the Docker build context sees it, without the ignored files.

    Installing from this copy keeps pip's in-tree build output (build/, *.egg-info) out
    of the working tree, and shows that the context holds everything the build needs.
    Patterns are matched like Docker's: relative to the root, `**/` for any depth.
    """
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "negated patterns are not handled here"

    def ignored(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(
            fnmatch.fnmatchcase(rel, p) or (p.startswith("**/") and fnmatch.fnmatchcase(name, p[3:]))
            for p in patterns
        )

    def ignore(directory: str, names: list[str]) -> set[str]:
        base = Path(directory).relative_to(REPO).as_posix()
        return {n for n in names if ignored(n if base == "." else f"{base}/{n}")}

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continuation line"
    return instructions


def last(instructions: list[tuple[str, str]], keyword: str) -> str:
    values = [rest for kw, rest in instructions if kw == keyword]
    assert values, f"no {keyword} instruction"
    return values[-1]


def from_image(instructions: list[tuple[str, str]]) -> str:
    """The image of the (single) FROM, with the ARG defaults declared before it filled in."""
    args: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], image)
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
    raise AssertionError("no FROM instruction")


# --- the install script ------------------------------------------------------------


@pytest.mark.slow
def test_install_into_fresh_venv(tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv")
    context = copy_build_context(tmp_path / "context")

    # As in the Dockerfiles: the script inside the copied context, default --src.
    result = subprocess.run(
        ["bash", str(context / "docker" / "install.sh"), "--python", str(python)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    tamis_bin = tmp_path / "venv" / "bin" / "tamis"
    assert tamis_bin.is_file(), "the tamis console script was not installed into the venv"
    installed = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "import importlib.metadata as md, tamis; print(md.version('tamis')); print(tamis.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split("\n")
    version, module_file = installed[0], installed[1]
    assert Path(module_file).resolve().is_relative_to((tmp_path / "venv").resolve()), (
        f"tamis imported from {module_file}, not from the new venv"
    )
    cli = subprocess.run(
        [str(tamis_bin), "--version"], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert cli.returncode == 0, cli.stderr
    assert version in cli.stdout


def test_install_script_is_executable() -> None:
    # Both Dockerfiles execute it directly, relying on its shebang.
    assert os.access(INSTALL_SH, os.X_OK)
    assert INSTALL_SH.read_text().startswith("#!/usr/bin/env bash\n")


def test_help_exits_zero() -> None:
    result = run_install("--help")

    assert result.returncode == 0
    assert "--extras" in result.stdout and "--no-verify" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--bogus"], id="unknown-option"),
        pytest.param(["stray"], id="positional-argument"),
        pytest.param(["--python"], id="missing-value"),
        pytest.param(["--extras", "gpu;rm -rf /"], id="malformed-extras"),
        pytest.param(["--python", "/nonexistent/python3"], id="no-such-python"),
        pytest.param(["--src", "{tmp}/nonexistent"], id="no-such-src"),
        pytest.param(["--src", "{tmp}"], id="src-without-pyproject"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], tmp_path: Path) -> None:
    # A source tree that passes the checks, so each case fails on its own argument.
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text("[project]\nname = 'tamis'\n")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--src" not in args:
        args = [*args, "--src", str(src)]

    result = run_install(*args)

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("install.sh: error: ")


# --- the Dockerfiles ---------------------------------------------------------------


# Parametrised by file name: an id of plain "gpu" would pick up conftest's GPU skip.
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_runs_install_script(name: str) -> None:
    runs = [rest for kw, rest in dockerfile_instructions(DOCKERFILES[name]) if kw == "RUN"]
    install_runs = [r for r in runs if re.search(r"(^|[\s/])docker/install\.sh(\s|$)", r)]

    assert len(install_runs) == 1, runs
    assert "pip install" not in " ".join(runs), "installs must go through docker/install.sh"
    if name == "Dockerfile.gpu":
        assert re.search(r"--extras\s+gpu(\s|$)", install_runs[0])
        assert "--no-verify" in install_runs[0]
    else:
        assert "--extras" not in install_runs[0]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_default_command_and_user(name: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[name])

    command = json.loads(last(instructions, "ENTRYPOINT")) + json.loads(last(instructions, "CMD"))
    assert command == DEFAULT_COMMAND
    assert last(instructions, "WORKDIR") == "/out"
    assert last(instructions, "USER") not in {"root", "0", "0:0"}
    assert any(kw == "LABEL" for kw, _ in instructions)


def test_dockerfile_base_images() -> None:
    cpu = from_image(dockerfile_instructions(DOCKERFILES["Dockerfile"]))
    gpu = from_image(dockerfile_instructions(DOCKERFILES["Dockerfile.gpu"]))

    assert cpu == "python:3.11-slim"
    # RAPIDS tags: <release>-cuda<major>-py<python>, pinned (there is no "latest").
    assert re.fullmatch(r"nvcr\.io/nvidia/rapidsai/base:\d{2}\.\d{2}-cuda1[2-9]-py3\.1\d", gpu), gpu


def test_dockerignore_files_match() -> None:
    # BuildKit reads <Dockerfile>.dockerignore next to each Dockerfile.
    ignores = [Path(f"{path}.dockerignore").read_text() for path in DOCKERFILES.values()]

    assert ignores[0] == ignores[1]
    assert ".git" in ignores[0].splitlines()
