"""The architecture's rules, checked: logic without Prefect, lint-clean images."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_modules_never_import_prefect() -> None:
    offenders = []
    for path in (ROOT / "modules").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "prefect"]
    assert offenders == []


def test_scoring_path_does_not_load_torch() -> None:
    """Scoring containers need ONNX Runtime, not torch: importing the scorer must not pull it in."""
    code = "import sys, maas.modules.score; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "docker" / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_images_run_as_non_root(dockerfile: str) -> None:
    users = [
        line.split()[1] for line in (ROOT / "docker" / dockerfile).read_text().splitlines() if line.startswith("USER ")
    ]
    assert users and users[-1] not in ("root", "0")


def test_image_entrypoint_runs_worker_commands_as_given_and_bare_subcommands_with_prefect() -> None:
    """Workers start flow-run containers with `prefect flow-run execute`; people type `worker start ...`."""
    entry = [str(ROOT / "docker" / "entrypoint.sh")]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PREFECT_HOME": "/tmp/maas-entrypoint-test"}
    as_given = subprocess.run([*entry, "echo", "flow-run", "execute"], capture_output=True, text=True, env=env)
    assert as_given.stdout.strip() == "flow-run execute"
    bare = subprocess.run([*entry, "--version"], capture_output=True, text=True, env=env)
    assert bare.returncode == 0 and bare.stdout.strip().startswith("3."), bare.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_every_file_an_image_copies_is_in_the_build_context(dockerfile: str) -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    for line in (ROOT / "docker" / dockerfile).read_text().splitlines():
        words = [w for w in line.split() if not w.startswith("--")]
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in line.split()):
            for source in words[1:-1]:
                assert (ROOT / source).exists(), source
                excluded = any(Path(source).match(p.rstrip("/*")) or source.startswith(p.rstrip("*")) for p in ignored
                               if not p.startswith("!"))  # fmt: skip
                assert not excluded or f"!{source}" in ignored, f"{source} is excluded by .dockerignore"


def test_code_is_lint_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run([ruff, *args, "modules", "flows", "tests"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
