"""Example photos for the web demo, served from a folder outside the repository.

The sample photos are shared data that may not be copied into the project, so the demo reads
them where they are: ``FERFLOW_EXAMPLES_DIR``, by default ``../shared/samples/photos`` next to
the checkout. Up to :data:`MAX_EXAMPLES` photos are offered; when the folder has a
``labels.csv`` (``image,emotion``), the first photo of each annotated emotion, so the examples
differ. Without the folder (an installed wheel, a container) the list is empty and the demo
says so; nothing else changes.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_EXAMPLES_DIR = "FERFLOW_EXAMPLES_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "samples" / "photos"
MAX_EXAMPLES = 4
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass(frozen=True)
class Examples:
    files: dict[str, Path] = field(default_factory=dict)  # name → path; only these are served

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Examples:
        env = dict(os.environ if env is None else env)
        folder = Path(env.get(ENV_EXAMPLES_DIR, "").strip() or DEFAULT_DIR).expanduser()
        return cls({p.name: p for p in pick(folder)})

    def listing(self) -> dict[str, object]:
        """What ``GET /examples`` answers."""
        return {"examples": [{"name": name, "url": f"/examples/{name}"} for name in self.files]}

    def path(self, name: str) -> Path | None:
        """The file of a listed example, None for any other name (no path is built from it)."""
        return self.files.get(name)


def pick(folder: Path, limit: int = MAX_EXAMPLES) -> list[Path]:
    """Up to ``limit`` photos of ``folder``: one per emotion of its labels.csv when it has one,
    else the first ones by name."""
    if not folder.is_dir():
        return []
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in MEDIA_TYPES and p.is_file())
    labels = folder / "labels.csv"
    if not labels.is_file():
        return photos[:limit]
    by_name = {p.name: p for p in photos}
    chosen: dict[str, Path] = {}  # emotion → its first photo
    with open(labels, newline="") as f:
        for row in csv.DictReader(f):
            name, emotion = row.get("image", ""), row.get("emotion", "")
            if name in by_name and emotion not in chosen:
                chosen[emotion] = by_name[name]
    return list(chosen.values())[:limit] or photos[:limit]
