"""Checks a wheelhouse for an offline machine (``tools/gpu_wheels.sh`` builds one).

    python -m tools.wheelhouse DIR [pip target options: --python-version 3.12 --platform ...]

What the GPU machine's ``pip install --no-index --no-deps --target`` needs to succeed, and what
then has to import: one version of each package (two stop the whole install), the folder under
``MAX_MIB``, every wheel installable for the target Python (``pip install --dry-run``, offline),
and every requirement of every wheel met by another wheel or by the image (``image:`` in
``tools/gpu_wheels.txt``), since ``--no-deps`` checks none.
"""

import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

MAX_MIB = 60
"""What may travel with the working tree besides the code (64 MiB in all)."""
MANIFEST = Path(__file__).with_name("gpu_wheels.txt")
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
"""The GPU machine's interpreter, for the requirements' environment markers."""


def image_packages(manifest: Path = MANIFEST) -> set[str]:
    line = next(line for line in manifest.read_text().splitlines() if line.startswith("image:"))
    return {canonicalize_name(name) for name in line.removeprefix("image:").split()}


def _requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(metadata).decode())
    return [Requirement(text) for text in headers.get_all("Requires-Dist") or []]


def _mib(wheels: list[Path]) -> float:
    return sum(w.stat().st_size for w in wheels) / 2**20


def problems(folder: Path, provided: set[str]) -> list[str]:
    """What would stop the offline install or an import after it; empty if nothing."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return [f"{folder}: no wheels (build them with tools/gpu_wheels.sh)"]
    found, versions = [], {}
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        versions.setdefault(name, []).append(str(version))
    found += [f"{name}: {len(v)} versions ({', '.join(v)}): keep one" for name, v in versions.items() if len(v) > 1]
    mib = _mib(wheels)
    if mib > MAX_MIB:
        found.append(f"{folder}: {mib:.1f} MiB of wheels, over the {MAX_MIB} MiB that can travel")
    for wheel in wheels:
        for req in _requirements(wheel):
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue
            name = canonicalize_name(req.name)
            if name in provided:
                continue
            if name not in versions:
                found.append(f"{wheel.name} needs {req}, which is neither a wheel here nor in the image")
            elif not any(req.specifier.contains(v, prereleases=True) for v in versions[name]):
                found.append(f"{wheel.name} needs {req}, but the wheel here is {name} {versions[name][0]}")
    return found


def dry_run(folder: Path, pip_target: list[str]) -> subprocess.CompletedProcess:
    """The GPU machine's install, offline and without installing."""
    with tempfile.TemporaryDirectory() as target:
        return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
                               "--only-binary=:all:", "--target", target, *pip_target,
                               *map(str, sorted(folder.glob("*.whl")))], capture_output=True, text=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    folder, pip_target = Path(args[0]), args[1:]
    found = problems(folder, image_packages())
    if not found:
        run = dry_run(folder, pip_target)
        if run.returncode != 0:
            found.append(f"pip install --dry-run --no-index failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    if found:
        sys.exit("wheelhouse: " + "\nwheelhouse: ".join(found))
    wheels = sorted(folder.glob("*.whl"))
    print(f"wheelhouse: {len(wheels)} wheels, {_mib(wheels):.1f} MiB, install offline for {' '.join(pip_target[:2])}: ok")


if __name__ == "__main__":
    main()
