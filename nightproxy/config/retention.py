"""Retention records: the global settings, and the overrides of an upstream or a project."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["INHERIT", "Inherit", "RetentionConfig", "RetentionOverride"]


class Inherit(enum.Enum):
    """Marks an override field that was not set, distinct from ``None`` ("disabled")."""

    INHERIT = "inherit"


INHERIT: Final = Inherit.INHERIT


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    #: Seconds after which dev builds are hidden; ``None`` disables age hiding.
    dev_max_age: float | None = 7 * 86400
    keep_latest: int = 3
    #: Seconds a file stays listed after its upstream stopped listing it.
    keep_missing: float = 3 * 86400


@dataclass(frozen=True, slots=True)
class RetentionOverride:
    """Retention settings of an upstream or project; unset fields inherit the wider scope."""

    dev_max_age: float | Inherit | None = INHERIT
    keep_latest: int | Inherit = INHERIT
    keep_missing: float | Inherit = INHERIT

    def apply(self, base: RetentionConfig) -> RetentionConfig:
        return RetentionConfig(
            dev_max_age=(
                base.dev_max_age if isinstance(self.dev_max_age, Inherit) else self.dev_max_age
            ),
            keep_latest=(
                base.keep_latest if isinstance(self.keep_latest, Inherit) else self.keep_latest
            ),
            keep_missing=(
                base.keep_missing if isinstance(self.keep_missing, Inherit) else self.keep_missing
            ),
        )
