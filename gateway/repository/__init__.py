"""The model repository: per-version state, load and unload, labels moved at run time, and
the overrides those changes leave on top of the policy file (shared by every replica)."""

from ._index import model_index, needed_by, version_state
from ._overrides import (
    Composed,
    Overrides,
    compose,
    move_label,
    prune,
    roll_back,
    set_loaded,
)
from ._stores import (
    FileOverrideStore,
    MemoryOverrideStore,
    OverrideStore,
    OverridesUnavailable,
    RedisOverrideStore,
    override_store,
)

__all__ = [
    "Composed",
    "FileOverrideStore",
    "MemoryOverrideStore",
    "OverrideStore",
    "Overrides",
    "OverridesUnavailable",
    "RedisOverrideStore",
    "compose",
    "model_index",
    "move_label",
    "needed_by",
    "override_store",
    "prune",
    "roll_back",
    "set_loaded",
    "version_state",
]
