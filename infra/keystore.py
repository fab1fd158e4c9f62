"""Keys and secrets on each party's own disk.

- Long-term Ed25519 identities: one per silo (``silos/<id>/identity/ed25519.pem``) and one for the
  coordinator (``coordinator/identity/ed25519.pem``), created on first use from the OS RNG, files
  0600 in 0700 folders. Their public halves are published to the exchange, write-once: a party
  that later shows up with another key is refused, not silently re-keyed.
- A silo's per-round secure-aggregation state (its round key pairs, the keys of its peers' shares
  to it, self-mask seed, the shares it holds, its unmasked update) lives in ``silos/<id>/secagg/`` (0600) from the first phase to the
  last and is deleted when the silo has revealed its shares. None of it is ever written to the
  exchange, a Prefect result, a log or MLflow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_core.errors import StateError
from fl_core.secagg.client import ClientState
from infra.state import StateDir


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (temp file + rename)."""
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _identity(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise StateError(f"identity key {path} is unreadable") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise StateError(f"identity key {path} is not an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(path, pem)
    return key


def silo_identity(state: StateDir, silo_id: str) -> Ed25519PrivateKey:
    return _identity(state.silo(silo_id) / "identity" / "ed25519.pem")


def coordinator_identity(state: StateDir) -> Ed25519PrivateKey:
    return _identity(state.root / "coordinator" / "identity" / "ed25519.pem")


class RoundSecrets:
    """A silo's secure-aggregation state for one round of one federation."""

    def __init__(self, state: StateDir, silo_id: str, federation: str, round_number: int, attempt: str = ""):
        """One attempt at the round: a run of an interrupted attempt that is still going never shares
        (or overwrites) the secrets of the attempt that redoes the round."""
        self.folder = state.silo(silo_id) / "secagg"
        self.round_stem = f"{federation}.r{round_number}"  # '.' cannot occur in a federation id
        self.stem = self.round_stem + (f".{attempt}" if attempt else "")

    @property
    def _state_path(self) -> Path:
        return self.folder / f"{self.stem}.json"

    @property
    def _update_path(self) -> Path:
        return self.folder / f"{self.stem}-update.npz"

    def save_state(self, client: ClientState) -> None:
        write_private(self._state_path, json.dumps(client.to_dict()).encode())

    def load_state(self) -> ClientState:
        try:
            return ClientState.from_dict(json.loads(self._state_path.read_text()))
        except FileNotFoundError:
            raise StateError(f"no secure-aggregation state for {self.stem} on this silo (an earlier phase did not run here)") from None
        except json.JSONDecodeError:
            raise StateError(f"the secure-aggregation state for {self.stem} is corrupt") from None

    def save_update(self, delta: np.ndarray, weight: float, noise: np.ndarray | None = None) -> None:
        """The silo's update and its weight in the mean (its training-set size, or its q-FFL weight),
        and its distributed-DP noise share if any."""
        import io

        buffer = io.BytesIO()
        extra = {} if noise is None else {"noise": np.asarray(noise, dtype=np.int64)}
        np.savez(buffer, delta=np.asarray(delta, dtype=np.float32), weight=np.float64(weight), **extra)
        write_private(self._update_path, buffer.getvalue())

    def load_update(self) -> tuple[np.ndarray, float]:
        with self._open_update() as data:
            return data["delta"].copy(), float(data["weight"])

    def load_noise(self) -> np.ndarray | None:
        with self._open_update() as data:
            return data["noise"].copy() if "noise" in data.files else None

    def _open_update(self):
        try:
            return np.load(self._update_path)
        except FileNotFoundError:
            raise StateError(f"no local update for {self.stem} on this silo (it did not train this round)") from None

    def forget_other_attempts(self) -> None:
        """Delete what an interrupted attempt at this round left on this silo's disk."""
        own = {self._state_path.name, self._update_path.name}
        for path in self.folder.glob(f"{self.round_stem}.*"):
            if path.name not in own:
                path.unlink(missing_ok=True)

    def forget(self) -> None:
        for path in (self._state_path, self._update_path):
            path.unlink(missing_ok=True)
