"""Member bookkeeping shared by the classification and segmentation ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class MemberEnsemble:
    """Member ids, class count and names, validation scores and the options of an ensemble."""

    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, member_ids: Sequence[str] | None = None) -> None:
        if isinstance(member_ids, str):
            raise ValueError(f"member_ids must be a sequence of ids, got the string {member_ids!r}")
        self.member_ids: list[str] | None = None if member_ids is None else [str(m) for m in member_ids]
        if self.member_ids is not None and len(set(self.member_ids)) != len(self.member_ids):
            raise ValueError(f"member_ids must be unique, got {self.member_ids}")
        self.n_classes: int | None = None
        self.class_names: list[str] | None = None
        self.validation_: dict[str, Any] = {}
        self.fitted = False

    @property
    def options(self) -> dict[str, Any]:
        """Constructor options (JSON-ready)."""
        return {name: getattr(self, name) for name in self.option_names}
