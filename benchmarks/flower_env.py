"""A private virtual environment holding Flower (`flwr`), for benchmarks that compare against it.

Flower is never a dependency of fedsilo: it lives only in ``benchmarks/.venv-flower`` (git-ignored),
which :func:`ensure_flower_env` creates on first use and reuses afterwards. Scripts meant to run in
it (e.g. ``flower_secagg_peer.py``) import only the standard library, numpy and flwr, and are started
with the python path this function returns.

    from flower_env import ensure_flower_env            # from a script in benchmarks/
    python = ensure_flower_env(Path(__file__).resolve().parent)   # root = the benchmarks folder
    subprocess.run([str(python), "flower_secagg_peer.py", "--quick"], ...)

or, by hand: ``python benchmarks/flower_env.py`` prints the env's python.

Only the core ``flwr`` package is installed, without extras (the ``simulation`` extra would bring
ray, and nothing here needs torch). The install needs PyPI; without it a RuntimeError says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

FLWR_VERSION = "1.42.0"
FLWR_REQUIREMENT = f"flwr=={FLWR_VERSION}"
ENV_DIRNAME = ".venv-flower"
# Written last, once flwr imports in the new env: its presence (with the same requirement) means the
# env is complete, so a half-finished install is retried rather than trusted.
STAMP_NAME = ".flwr-installed"


def _env_python(env_dir: Path) -> Path:
    if os.name == "nt":
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    text = (proc.stdout or "") + (proc.stderr or "")
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_flower_env(root: Path) -> Path:
    """Create (once) ``root/.venv-flower`` with ``flwr`` installed; return the env's python.

    Idempotent: a complete env is detected by a stamp file and returned at once. Prints one progress
    line (to stderr) while installing. Raises RuntimeError if the env cannot be created or flwr
    cannot be installed (typically: no network access to PyPI).
    """
    env_dir = Path(root).resolve() / ENV_DIRNAME
    python = _env_python(env_dir)
    stamp = env_dir / STAMP_NAME
    if python.exists() and stamp.exists() and stamp.read_text().strip() == FLWR_REQUIREMENT:
        return python

    print(
        f"Installing {FLWR_REQUIREMENT} into {env_dir} (one-time setup, about a minute)...",
        file=sys.stderr,
        flush=True,
    )
    # pip keeps no cache (nothing written under the home directory); a temp dir takes anything else
    # the tools might want to write.
    with tempfile.TemporaryDirectory(prefix="flower-env-") as tmp:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        env.update(
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
            TMPDIR=tmp,
        )
        if not python.exists():
            proc = _run([sys.executable, "-m", "venv", str(env_dir)], env)
            if proc.returncode != 0 or not python.exists():
                raise RuntimeError(f"Could not create the Flower virtual environment at {env_dir}:\n{_tail(proc)}")
        proc = _run([str(python), "-m", "pip", "install", "--no-cache-dir", FLWR_REQUIREMENT], env)
        if proc.returncode != 0:
            raise RuntimeError(
                f"Could not install {FLWR_REQUIREMENT} into {env_dir}: pip failed. Is PyPI reachable "
                f"(no network access?). Last pip output:\n{_tail(proc)}"
            )
        check = _run([str(python), "-c", "import flwr, numpy; print(flwr.__version__)"], env)
        if check.returncode != 0 or check.stdout.strip() != FLWR_VERSION:
            raise RuntimeError(f"{FLWR_REQUIREMENT} was installed into {env_dir} but does not import:\n{_tail(check)}")
    stamp.write_text(FLWR_REQUIREMENT + "\n")
    return python


if __name__ == "__main__":
    print(ensure_flower_env(Path(__file__).resolve().parent))
