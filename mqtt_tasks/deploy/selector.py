"""Which workers a rollout is for: the ``--to`` selector (pure).

Grammar (one term; no spaces)::

    selector := "all"                      every worker
              | "worker=" ID ("," ID)*     the workers with these ids
              | "label=" LABEL ("," LABEL)*  the workers that have every one of these labels

IDs and labels use the alphabet of worker ids (``A-Z a-z 0-9 _ . : -``). The selector is part of
the signed manifest: a worker it does not select refuses the bundle, so neither the coordinator
nor the broker can widen a rollout's audience.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigError
from ..protocol.labels import check_labels
from ..protocol.topics import check_name


@dataclass(frozen=True)
class Selector:
    kind: str  # all, worker, label
    values: frozenset[str] = frozenset()

    def matches(self, worker: str, labels: Iterable[str]) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "worker":
            return worker in self.values
        return self.values <= set(labels)

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}={','.join(sorted(self.values))}"


def parse(text: str) -> Selector:
    """A selector from its text; ``ConfigError`` with the grammar otherwise."""
    if text == "all":
        return Selector("all")
    kind, sep, rest = text.partition("=")
    if not sep or kind not in ("worker", "label") or not rest:
        raise ConfigError(f"invalid selector {text!r}: use all, worker=ID[,ID...] or label=LABEL[,LABEL...]")
    items = rest.split(",")
    if kind == "worker":
        values = frozenset(check_name("worker id", item) for item in items)
    else:
        values = frozenset(check_labels(items, kind="selector labels"))
    return Selector(kind, values)
