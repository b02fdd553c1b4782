"""The installed names are maas.flows and maas.modules: an environment with packages named `flows` and `modules` of its
own (common in Prefect projects) imports both, neither shadowing the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]


def test_the_wheel_installs_beside_packages_named_flows_and_modules(tmp_path: Path) -> None:
    # Offline: the build backend comes from the dev environment (setuptools in the dev extra), not from an index.
    built = subprocess.run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("maas-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*PIP, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    assert not (site / "flows").exists() and not (site / "modules").exists()
    # `maas up` deploys the prefect.yaml it finds beside the installed flows
    shipped = {str(p.relative_to(site / "maas" / "deployments")) for p in (site / "maas" / "deployments").rglob("*.*")}
    assert shipped == {str(p.relative_to(ROOT / "deployments")) for p in (ROOT / "deployments").rglob("*.*")}
    theirs = tmp_path / "theirs"
    for name in ("flows", "modules"):
        (theirs / name).mkdir(parents=True)
        (theirs / name / "__init__.py").write_text(f"OWNER = 'their {name}'\n")
    probe = (
        "import sys, flows, modules, maas.flows.cli, maas.flows.score, maas.flows.stack, maas.modules.storage\n"
        "print(flows.OWNER, modules.OWNER, sep=', ')\n"
        f"print(*(m.__file__.startswith({str(site)!r}) for m in (maas.flows.cli, maas.modules.storage)))\n"
        "print(maas.flows.stack.PREFECT_FILE.is_file())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flows', 'modules')))"
    )
    # The wheel's copy comes first on the path; the editable install of this checkout is still on the meta path, so
    # the probe asserts which files were loaded.
    env = {"PYTHONPATH": f"{site}:{theirs}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["their flows, their modules", "True True", "True", "['flows', 'modules']"]
