"""What an operator statement is resolved against: the names declared so far and where errors go.

The checker (`lang.check`) owns one `Scope` and fills it as it walks a study; the statement
resolver (`lang.statement`) reads it. Neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from mechstudy.lang.errors import StudyError
from mechstudy.lang.resolved import Call, DatasetDecl, ModelDecl, Span


@dataclass
class Scope:
    """Declarations by name (None marks a declared name whose declaration is broken, so its uses
    stay quiet), the one namespace they share, every name a file declares anywhere (for "declared
    later" hints), a lookup for references and a sink for errors."""

    lookup: Callable[[str, Any], Any]
    models: dict[str, ModelDecl | None] = field(default_factory=dict)
    datasets: dict[str, DatasetDecl | None] = field(default_factory=dict)
    results: dict[str, Call | None] = field(default_factory=dict)
    declared: dict[str, tuple[str, Span]] = field(default_factory=dict)
    ahead: dict[str, tuple[str, Span]] = field(default_factory=dict)
    errors: list[StudyError] = field(default_factory=list)

    def err(self, e: StudyError) -> None:
        self.errors.append(e)
