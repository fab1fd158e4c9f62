"""A silo's SCAFFOLD control variates, kept in its own state folder (they never leave it; only their
round-to-round deltas go into the secure sum).

One file per round the silo trained in (``<state>/silos/<id>/controls/<federation>/r<round>.npy``,
0600). The server's state names, for each silo, the round whose control variate was last in a
committed sum (`fl_core.server_opt.ServerState.accepted`); that is the one the silo starts from, so
that a round that was aborted or that dropped the silo after it trained does not leave the silo's
cᵢ ahead of the server's c. Files older than the one in use are removed.
"""

from __future__ import annotations

import io
import re

import numpy as np

from fl_core.errors import StateError
from infra.keystore import write_private
from infra.state import StateDir

_NAME = re.compile(r"^r(\d{6})\.npy$")


class ControlStore:
    def __init__(self, state: StateDir, silo_id: str, federation: str):
        self.folder = state.silo(silo_id) / "controls" / federation

    def _path(self, round_number: int):
        return self.folder / f"r{round_number:06d}.npy"

    def load(self, round_number: int | None, length: int) -> np.ndarray:
        """The control variate saved in `round_number` (zeros if None: the silo was never in a sum).
        `StateError` if it is missing or of the wrong length."""
        if round_number is None:
            return np.zeros(length, dtype=np.float32)
        try:
            vector = np.load(self._path(round_number), allow_pickle=False)
        except FileNotFoundError:
            raise StateError(f"the server counts this silo's control variate of round {round_number}, which is not in "
                             f"{self.folder}") from None
        if vector.shape != (length,):
            raise StateError(f"control variate of round {round_number} has shape {vector.shape}, the model ({length},)")
        return vector.astype(np.float32)

    def save(self, round_number: int, vector: np.ndarray, keep_from: int | None) -> None:
        """Keep `vector` as round `round_number`'s control variate; drop those older than `keep_from`."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        write_private(self._path(round_number), buffer.getvalue())
        for path in self.folder.iterdir():
            match = _NAME.match(path.name)
            if match and int(match.group(1)) < (keep_from if keep_from is not None else round_number):
                path.unlink(missing_ok=True)
