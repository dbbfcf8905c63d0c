"""DVC and git: where the data comes from, and which version of it and of the code was used."""

from __future__ import annotations

import subprocess
from pathlib import Path

DEFAULT_REMOTE = "storage"


class DataPullError(RuntimeError):
    """The DVC pull cannot run; the message says how to fix the remote configuration."""


def _remote_hint(remote: str) -> str:
    return (
        f"configure it with `dvc remote add -d {remote} <url>` or point the existing one elsewhere "
        f"with `dvc remote modify {remote} url s3://bucket/path` (or a local folder)"
    )


def pull(root: str | Path = ".", targets: list[str] | None = None, jobs: int | None = None) -> dict:
    """``dvc pull`` through DVC's Python API; returns DVC's stats (added/fetched files)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        raise DataPullError(f"{root} is not a DVC project (no .dvc/); run from the ferflow checkout")
    with Repo(str(root)) as repo:
        remote = repo.config["core"].get("remote")
        if not remote:
            raise DataPullError(
                f"no default DVC remote in {root / '.dvc/config'}; {_remote_hint(DEFAULT_REMOTE)}"
            )
        url = repo.config["remote"].get(remote, {}).get("url")
        if url is None:
            raise DataPullError(f"DVC remote {remote!r} has no url; {_remote_hint(remote)}")
        if "://" not in url:
            local = (root / ".dvc" / url).resolve() if not Path(url).is_absolute() else Path(url)
            if not local.is_dir():
                raise DataPullError(
                    f"DVC remote {remote!r} points at {local}, which does not exist; {_remote_hint(remote)}"
                )
        try:
            return repo.pull(targets=targets, jobs=jobs)
        except DvcException as exc:
            raise DataPullError(
                f"dvc pull from remote {remote!r} ({url}) failed: {exc}; {_remote_hint(remote)}"
            ) from exc


def git_commit(root: str | Path = ".") -> str | None:
    """Current commit of the checkout (with ``-dirty`` when files differ), or None outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha}-dirty" if dirty else sha
