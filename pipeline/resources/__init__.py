"""Files shipped inside the installed package: DeepSpeed configs and the run configs.

They live here (not at the repository root) so a wheel install carries them; the repository's
`configs/` and `ds_configs/` are links to these folders. A config argument that is not an existing
file but names a packaged config (`default`, `default.yaml`) loads the packaged one, so
`sora plan default` works from any directory.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+
    from importlib.resources.abc import Traversable

DS_CONFIGS: Traversable = files(__name__) / "ds_configs"
CONFIGS: Traversable = files(__name__) / "configs"


def config_names() -> list[str]:
    """Names of the packaged run configs (file names without `.yaml`)."""
    return sorted(entry.name[: -len(".yaml")] for entry in CONFIGS.iterdir() if entry.name.endswith(".yaml"))


def packaged_config(name: str) -> Traversable | None:
    """The packaged config called `name` (`default` or `default.yaml`), or None."""
    if "/" in name or "\\" in name:
        return None
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    return CONFIGS / f"{stem}.yaml" if stem in config_names() else None
