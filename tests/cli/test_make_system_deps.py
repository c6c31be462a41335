"""`make system-deps` (and hack/cluster's deb_installed, which build.sh --node uses for the real
node's packages) install what is needed and are not fooled by a removed package."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_a_removed_package_with_config_files_left_is_installed_again(tmp_path: Path) -> None:
    """`apt-get remove chromium` leaves its config files: dpkg then still "knows" the package
    (`dpkg -s` exits 0, status "deinstall ok config-files") though its binary is gone. A check on
    `dpkg -s` alone skipped the install, and the browser tests failed for want of Chromium."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "apt-get.calls"
    status = {
        "dataset-fashion-mnist": "install ok installed",
        "chromium": "deinstall ok config-files",
    }
    cases = "\n".join(f'  *{pkg}*) echo "{s}";;' for pkg, s in status.items())
    # dpkg and dpkg-query answer as Debian's do for these two packages; apt-get records its args.
    _fake(fake, "dpkg", "exit 0\n")
    _fake(fake, "dpkg-query", f'case "$*" in\n{cases}\nesac\n')
    _fake(fake, "apt-get", f'echo "$*" >> {calls}\n')
    _fake(fake, "id", "echo 0\n")
    proc = subprocess.run(
        ["make", "--no-print-directory", "system-deps"],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = [line for line in calls.read_text().splitlines() if " install " in f" {line} "]
    assert installs, proc.stdout
    (install,) = installs
    assert install.split()[-1:] == ["chromium"], install  # only what is missing


def test_deb_installed_of_hack_cluster_says_the_same(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    _fake(
        fake,
        "dpkg-query",
        'case "$*" in\n'
        '  *containerd*) echo "install ok installed";;\n'
        '  *runc*) echo "deinstall ok config-files";;\n'
        "  *) exit 1;;\n"
        "esac\n",
    )
    lib = ROOT / "hack" / "cluster" / "lib.sh"
    results = {}
    for pkg in ("containerd", "runc", "socat"):
        proc = subprocess.run(
            ["bash", "-c", f'source "{lib}" && deb_installed {pkg}'],
            env={**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        results[pkg] = proc.returncode == 0
    assert results == {"containerd": True, "runc": False, "socat": False}
