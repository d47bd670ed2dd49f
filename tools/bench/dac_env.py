"""The DAC reference environment: makes (or finds) ``.venv-dac`` and runs dac_reference.py in it.

DAC (``descript-audio-codec``) cannot share aurora's environment: descript-audiotools pins
``protobuf<3.20`` (for ``torch.utils.tensorboard``), which breaks wandb. So it gets a virtual
environment of its own, ``.venv-dac`` at the repository root (git-ignored: ``.venv*``), and
``tools/bench/dac_reference.py`` (which imports nothing from aurora) runs there as a
subprocess; this module, which runs in aurora's environment, builds that venv on demand and
returns the subprocess's JSON result.

    python -m tools.bench.dac_env [--preset dac-16khz|dac-44khz|dac-24khz|tiny] [--batch 2]
        [--seconds 0.38] [--warmup 1] [--steps 3] [--threads N] [--device cpu|cuda] [--amp]
        [--venv .venv-dac] [--wheelhouse DIR] [--share-torch]
    python -m tools.bench.dac_env --build-wheelhouse DIR [--python-version 3.12]

Two ways to build the venv (``ensure_dac_venv``):

* Online (the default; the CPU machines, CI, a workstation): ``python -m venv``, then
  ``pip install`` of ``PINS`` below: torch/torchaudio at aurora's versions (2.11.0, the
  PyPI wheel, the same +cu130 build aurora's ``.venv`` has) and DAC with its dependencies,
  resolved by pip. Measured on the 2-core CPU machine: about 5 minutes (download ~1 min,
  unpacking ~3.5 GB of torch + CUDA wheels the rest), 5.0 GB on disk.
* Shared torch (``share_torch=True``; the GPU machine, which has no network): the venv is
  made ``--without-pip``, a ``.pth`` file appends the host interpreter's site-packages
  (aurora's, whose torch is the one to compare against) *after* the venv's own, and the
  packages DAC needs beyond the host's are installed ``--no-deps`` from a wheelhouse
  (``--wheelhouse``, made on a machine with PyPI by ``build_wheelhouse``). The venv's own
  protobuf 3.19.6 shadows the host's; torch, numpy, scipy, ... are the host's. (Online, the
  shared mode resolves with pip instead of a wheelhouse; pip then prints an "ERROR: ...
  wandb requires protobuf>=5" conflict about the host's packages, which is harmless: the
  venv's protobuf is seen by the venv alone.) On the GPU machine, for instance:
  here ``python -m tools.bench.dac_env --build-wheelhouse .whl-dac`` (git-ignored), then
  there, with ``.whl-dac`` carried, ``python3 -m tools.bench.dac_env --wheelhouse .whl-dac
  --device cuda ...`` (about 20 s to build the venv).

Pins (checked on Python 3.11, torch 2.11.0+cu130, 2026-11): no dependency failed to build
and nothing pulls another torch (DAC and audiotools require plain ``torch``/``torchaudio``).
pip resolves ``protobuf`` to 3.19.6 (audiotools: ``>=3.9.2,<3.20``; tensorboard 2.20 accepts
it) and builds ``argbind`` 0.3.9 and ``randomname`` 0.2.1 from sdists (pure Python);
numpy 2.4.6, scipy 1.17.1, librosa 0.11.0 all work with audiotools 0.7.2. The pins below fix
the DAC side to the versions the benchmark was written against; the rest float.

Known DAC defect that the reference works around (see dac_reference.py): with an odd rate
(the 16 and 24 kHz configs' 5) DAC 1.0.0's decoder returns a few samples fewer than it was
given (8 fewer for [8, 5, 4, 2]) and train.py's losses fail on the shapes (descript-audio-codec
issue #42, open); the reference cuts the target to the reconstruction's length.

``.gitignore`` must keep ``.venv-dac`` out of git (a ``.venv*`` line).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).resolve().with_name("dac_reference.py")
DEFAULT_VENV = Path(".venv-dac")
MARKER = ".aurora-dac-ready"

TORCH_PINS = ("torch==2.11.0", "torchaudio==2.11.0")  # aurora's setup.py
DAC_PINS = (
    "descript-audio-codec==1.0.0",
    "descript-audiotools==0.7.2",
    "argbind==0.3.9",
    "protobuf==3.19.6",
)
PINS = TORCH_PINS + DAC_PINS

# Model and discriminator shapes (dac_reference.py's arguments, underscores for dashes).
# dac-44khz is conf/base.yml (quantizer_dropout 1.0); the others conf/final/*.yml (0.5).
_DISC = {
    "periods": [2, 3, 5, 7, 11],
    "fft_sizes": [2048, 1024, 512],
    "msd_rates": [],
    "bands": [(0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)],
}
DAC_PRESETS = {
    "dac-44khz": dict(
        sample_rate=44100, encoder_dim=64, encoder_rates=[2, 4, 8, 8], decoder_dim=1536,
        decoder_rates=[8, 8, 4, 2], n_codebooks=9, codebook_size=1024, codebook_dim=8,
        quantizer_dropout=1.0, **_DISC,
    ),
    "dac-24khz": dict(
        sample_rate=24000, encoder_dim=64, encoder_rates=[2, 4, 5, 8], decoder_dim=1536,
        decoder_rates=[8, 5, 4, 2], n_codebooks=32, codebook_size=1024, codebook_dim=8,
        quantizer_dropout=0.5, **_DISC,
    ),
    "dac-16khz": dict(
        sample_rate=16000, encoder_dim=64, encoder_rates=[2, 4, 5, 8], decoder_dim=1536,
        decoder_rates=[8, 5, 4, 2], n_codebooks=12, codebook_size=1024, codebook_dim=8,
        quantizer_dropout=0.5, **_DISC,
    ),
    # The smallest generator; DAC's discriminator keeps its fixed widths (42.5 M params) and
    # dominates a CPU step (about a minute at batch 4 x 0.5 s on 2 cores). For a smoke test,
    # fewer sub-discriminators: periods=[2], fft_sizes=[512].
    "tiny": dict(
        sample_rate=16000, encoder_dim=16, encoder_rates=[2, 4, 5, 8], decoder_dim=64,
        decoder_rates=[8, 5, 4, 2], n_codebooks=4, codebook_size=256, codebook_dim=8,
        quantizer_dropout=0.5, **_DISC,
    ),
}
PRESET_KEYS = {
    "sample_rate", "encoder_dim", "encoder_rates", "latent_dim", "decoder_dim", "decoder_rates",
    "n_codebooks", "codebook_size", "codebook_dim", "quantizer_dropout", "periods", "fft_sizes",
    "msd_rates", "bands",
}

# What the GPU machines' image ('cuda') already holds among DAC's dependencies
# (/work/.library/device/KINDS.md, 2026-11-17): left out of the wheelhouse, since with
# share_torch the venv sees them. Only DAC's closure matters here, not the whole image.
DEVICE_IMAGE_HAS = frozenset(
    """absl-py certifi charset-normalizer cloudpickle contourpy cycler einops filelock fonttools
    fsspec grpcio idna jinja2 joblib kiwisolver lazy-loader llvmlite markdown markdown-it-py
    markupsafe matplotlib mdurl mpmath msgpack narwhals networkx numba numpy packaging pillow
    psutil pygments pyparsing python-dateutil pyyaml requests rich scikit-learn scipy six sympy
    tensorboard-data-server threadpoolctl tqdm typing-extensions urllib3 werkzeug
    """.split()
)  # tensorboard is carried all the same: audiotools imports it, and 2.20 is known to accept
# protobuf 3.19.6, which the image's own version might not.
# Never in a wheelhouse: the host's (aurora's) torch stack is the one shared.
_HOST_ONLY_PREFIXES = ("torch", "triton", "nvidia-", "cuda-", "pip", "setuptools", "wheel")


def _log(msg: str) -> None:
    print(f"[dac-env] {msg}", file=sys.stderr, flush=True)


def _resolve(path: Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def venv_python(path: Path = DEFAULT_VENV) -> Path:
    return _resolve(path) / "bin" / "python"


def _host_site_dirs() -> list[str]:
    """The host interpreter's directory that holds torch (its site-packages), for the .pth."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        raise RuntimeError("share_torch: torch is not importable in this interpreter")
    return [str(Path(spec.origin).resolve().parents[1])]


def _host_torch_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:
        return None


def _venv_site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip())


def _wanted(share_torch: bool, wheelhouse: Path | None) -> dict:
    return {
        "pins": list(DAC_PINS if share_torch else PINS),
        "share_torch": share_torch,
        "host": _host_site_dirs() if share_torch else None,
        "wheelhouse": sorted(p.name for p in wheelhouse.glob("*.whl")) if wheelhouse else None,
    }


def _check(python: Path) -> dict:
    out = subprocess.run(
        [str(python), "-I", "-c",
         "import json, torch, dac, audiotools, google.protobuf as pb; print(json.dumps("
         "{'torch': torch.__version__, 'dac': dac.__version__, 'audiotools': audiotools.__version__,"
         " 'protobuf': pb.__version__}))"],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the DAC venv at {python} does not import dac/torch:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_dac_venv(
    path: Path = DEFAULT_VENV,
    *,
    wheelhouse: Path | str | None = None,
    share_torch: bool | None = None,
) -> Path:
    """The DAC venv's python executable, building the venv first if it is missing or stale.

    Idempotent: a marker file in the venv records what was installed; a venv whose marker
    matches is returned at once (no pip). A relative ``path`` is taken from the repository
    root. ``wheelhouse`` (or $AURORA_DAC_WHEELHOUSE) installs offline from that folder;
    ``share_torch`` (default: $AURORA_DAC_SHARE_TORCH=1, or on whenever a wheelhouse is used)
    reuses this interpreter's torch instead of installing one (module docstring).
    """
    root = _resolve(path)
    wheelhouse = wheelhouse or os.environ.get("AURORA_DAC_WHEELHOUSE") or None
    wheelhouse = _resolve(Path(wheelhouse)) if wheelhouse else None
    if share_torch is None:
        share_torch = os.environ.get("AURORA_DAC_SHARE_TORCH") == "1" or wheelhouse is not None
    if wheelhouse is not None and not share_torch:
        raise ValueError("a wheelhouse holds no torch: use it with share_torch=True")
    python = root / "bin" / "python"
    marker = root / MARKER
    wanted = _wanted(share_torch, wheelhouse)
    if python.exists() and marker.exists():
        try:
            built = json.loads(marker.read_text()).get("wanted") or {}
        except (OSError, ValueError):
            built = {}
        if built == wanted:
            return python
        marker.unlink()
        if built.get("share_torch") != share_torch:  # its own torch would shadow the host's, or v.v.
            _log(f"{root} was built in the other mode (share_torch={built.get('share_torch')}): rebuilding")
            shutil.rmtree(root)
        else:
            _log(f"{root} was built for other pins or wheels: reinstalling")

    t0 = time.perf_counter()
    if not python.exists():
        _log(f"creating {root} ({'shared torch' if share_torch else 'own torch'}) with {sys.executable}")
        cmd = [sys.executable, "-m", "venv"] + (["--without-pip"] if share_torch else []) + [str(root)]
        subprocess.run(cmd, check=True)

    if share_torch:
        site = _venv_site_packages(python)
        host = wanted["host"]
        (site / "_aurora_host_site.pth").write_text("".join(f"{d}\n" for d in host))
        _log(f"shared torch {_host_torch_version()} from {', '.join(host)}")
        if wheelhouse is not None:
            wheels = sorted(str(p) for p in wheelhouse.glob("*.whl"))
            if not wheels:
                raise FileNotFoundError(f"no wheels in {wheelhouse}")
            _log(f"installing {len(wheels)} wheels from {wheelhouse} (offline, --no-deps)")
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                 "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", str(site), *wheels],
                check=True, stdout=sys.stderr,
            )
        else:
            # Online: pip (run by the host, into the venv's prefix) resolves DAC's needs; what
            # the host already has counts as installed, since the .pth puts it on sys.path.
            _log(f"pip install {' '.join(DAC_PINS)} (host packages count as installed)")
            subprocess.run(
                [sys.executable, "-m", "pip", "--python", str(python), "install",
                 "--disable-pip-version-check", *DAC_PINS],
                check=True, stdout=sys.stderr,
            )
    else:
        _log(f"pip install {' '.join(PINS)} (torch + CUDA wheels: ~5 min, 5 GB on a fresh machine)")
        subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", *PINS],
            check=True, stdout=sys.stderr,
        )

    versions = _check(python)
    host_torch = _host_torch_version()
    if host_torch and versions["torch"].split("+")[0] != host_torch.split("+")[0]:
        _log(f"WARNING: DAC venv torch {versions['torch']} != this interpreter's {host_torch}")
    marker.write_text(json.dumps({"wanted": wanted, "versions": versions}, indent=1))
    _log(f"ready in {time.perf_counter() - t0:.0f} s: {versions}")
    return python


def _preset_args(preset: dict) -> list[str]:
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        raise ValueError(f"unknown DAC preset keys {sorted(unknown)}; known: {sorted(PRESET_KEYS)}")
    args: list[str] = []
    for key, value in preset.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key == "bands":
            args += [flag, *(f"{float(lo)},{float(hi)}" for lo, hi in value)]
        elif isinstance(value, (list, tuple)):
            args += [flag, *(str(v) for v in value)]
        elif key == "quantizer_dropout":
            args += [flag, str(float(value))]
        else:
            args += [flag, str(value)]
    return args


def run_dac_step(
    python: Path | str,
    preset: dict,
    batch: int,
    seconds: float,
    steps: int,
    warmup: int,
    threads: int,
    device: str,
    *,
    amp: bool = False,
    seed: int = 0,
    timeout: float | None = None,
) -> dict:
    """Runs dac_reference.py --json in the DAC venv and returns its result (a dict).

    ``preset``: DAC model/discriminator arguments (keys as in ``DAC_PRESETS``; missing ones take
    conf/base.yml's values). The child is isolated (``python -I``: no PYTHONPATH, no script
    folder on sys.path) so nothing of aurora's can leak in; OMP/MKL threads = ``threads``.
    Its stderr passes through; a failure raises with the return code.
    """
    cmd = [
        str(python), "-I", str(REFERENCE), "--json",
        "--batch", str(batch), "--seconds", str(seconds), "--steps", str(steps),
        "--warmup", str(warmup), "--threads", str(threads), "--device", device, "--seed", str(seed),
        *_preset_args(preset),
    ] + (["--amp"] if amp else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(lines[-20:])
        raise RuntimeError(f"dac_reference.py failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return json.loads(lines[-1])


def build_wheelhouse(
    dest: Path | str,
    *,
    python_version: str = "3.12",
    source_venv: Path = DEFAULT_VENV,
    skip: frozenset = DEVICE_IMAGE_HAS,
) -> list[Path]:
    """Wheels of DAC's dependency closure minus the host's torch stack and ``skip``, for an
    offline ``ensure_dac_venv(wheelhouse=..., share_torch=True)`` on another machine.

    The closure and its versions are read from ``source_venv`` (an online-built DAC venv, so
    the versions are the ones tested); binary wheels are fetched for ``python_version`` on
    manylinux x86-64, and sdist-only packages (argbind, randomname: pure Python) are built
    here. Needs PyPI. About 15 MiB (39 wheels) for the GPU image's gaps.
    """
    dest = _resolve(Path(dest))
    dest.mkdir(parents=True, exist_ok=True)
    python = ensure_dac_venv(source_venv)
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        check=True, capture_output=True, text=True,
    )
    norm = lambda n: n.lower().replace("_", "-").replace(".", "-")  # noqa: E731
    pinned = {norm(pin.split("==")[0]) for pin in DAC_PINS}  # protobuf 3.19.6 above all
    reqs = [
        f"{p['name']}=={p['version']}"
        for p in json.loads(listed.stdout)
        if norm(p["name"]) in pinned
        or (norm(p["name"]) not in skip and not norm(p["name"]).startswith(_HOST_ONLY_PREFIXES))
    ]
    platforms = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
        "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    plat_args = [a for p in platforms for a in ("--platform", p)]
    for req in reqs:
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
             *plat_args, "-d", str(dest), req],
            stdout=sys.stderr, stderr=subprocess.DEVNULL,
        )
        if got.returncode != 0:  # no wheel on PyPI: build one (pure-Python sdists here)
            _log(f"building a wheel for {req}")
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                 "-w", str(dest), req],
                check=True, stdout=sys.stderr,
            )
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    _log(f"{len(wheels)} wheels, {size:.1f} MiB in {dest}")
    return wheels


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--wheelhouse", type=Path, default=None)
    p.add_argument("--share-torch", action="store_true", default=None)
    p.add_argument("--build-wheelhouse", type=Path, default=None, metavar="DIR")
    p.add_argument("--python-version", default="3.12")
    p.add_argument("--preset", default="tiny", choices=sorted(DAC_PRESETS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=0.38)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    args = p.parse_args(argv)
    if args.build_wheelhouse is not None:
        build_wheelhouse(args.build_wheelhouse, python_version=args.python_version, source_venv=args.venv)
        return None
    python = ensure_dac_venv(args.venv, wheelhouse=args.wheelhouse, share_torch=args.share_torch)
    result = run_dac_step(
        python, DAC_PRESETS[args.preset], args.batch, args.seconds, args.steps, args.warmup,
        args.threads, args.device, amp=args.amp,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
