"""A silo's personalised models, kept in its own state folder (they never leave it; only their
metrics on the silo's holdout do).

One pair of files per round the silo personalised in
(``<state>/silos/<id>/personal/<federation>/r<round>.npy`` and ``.json``, 0600): the weights,
fine-tuned from the round's candidate (`fl_core.personalise`), and what they were made from (the
candidate's sha256) with their metrics. A redone evaluation of the same candidate reuses them, so
the fine-tuning — and under record-level DP its privacy charge — happens once. The newest
``KEEP`` rounds are kept.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np

from infra.keystore import write_private
from infra.state import StateDir

_NAME = re.compile(r"^r(\d{6})\.(npy|json)$")
KEEP = 5


class PersonalStore:
    def __init__(self, state: StateDir, silo_id: str, federation: str):
        self.folder = state.silo(silo_id) / "personal" / federation

    def _path(self, round_number: int, suffix: str):
        return self.folder / f"r{round_number:06d}.{suffix}"

    def metrics(self, round_number: int, candidate_sha256: str) -> dict[str, float] | None:
        """The metrics of round `round_number`'s personalised model if it was made from this candidate."""
        try:
            meta = json.loads(self._path(round_number, "json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if meta.get("candidate") != candidate_sha256 or not self._path(round_number, "npy").exists():
            return None
        return {str(k): float(v) for k, v in meta.get("metrics", {}).items()}

    def weights(self, round_number: int) -> np.ndarray:
        return np.load(self._path(round_number, "npy"), allow_pickle=False)

    def save(self, round_number: int, vector: np.ndarray, candidate_sha256: str, metrics: dict[str, float]) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        write_private(self._path(round_number, "npy"), buffer.getvalue())
        write_private(self._path(round_number, "json"),
                      json.dumps({"candidate": candidate_sha256, "metrics": metrics}, sort_keys=True).encode())
        rounds = sorted({int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name))})
        for old in rounds[:-KEEP]:
            for suffix in ("npy", "json"):
                self._path(old, suffix).unlink(missing_ok=True)
