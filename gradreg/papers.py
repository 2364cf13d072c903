"""The numbers the papers report, read from ``papers.json`` (one data file, each entry with its source),
so chapters can set them beside ours without typing a number into the book."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import GradregError


@dataclass(frozen=True)
class Reported:
    """One experiment's reported numbers: {cell: (mean, std or None)} and where they come from."""

    source: str
    protocol: str
    seeds: int
    metric: str
    cells: dict[str, tuple[float, float | None]]


@lru_cache(maxsize=1)
def _all() -> dict:
    return json.loads((Path(__file__).with_name("papers.json")).read_text())


def reported(experiment: str) -> Reported:
    """What the paper reports for an experiment; a name it has no numbers for is a GradregError."""
    entry = _all().get(experiment)
    if entry is None or experiment.startswith("_"):
        raise GradregError(f"no reported numbers for {experiment!r}; have: "
                           f"{', '.join(k for k in _all() if not k.startswith('_'))}")
    cells = {c: (v[0], v[1]) for c, v in entry["cells"].items()}
    return Reported(entry["source"], entry["protocol"], entry["seeds"], entry["metric"], cells)


@dataclass(frozen=True)
class Claim:
    """A claim a paper makes without numbers: our paraphrase, the paper's words, and where."""

    claim: str
    quote: str
    source: str


def claims(topic: str) -> list[Claim]:
    """The paper's claims on an experiment or topic (e.g. ``"mnist-sizes"``, ``"gradient-norms"``)."""
    entry = _all()["_claims"].get(topic)
    if entry is None:
        raise GradregError(f"no recorded claims for {topic!r}; have: {', '.join(_all()['_claims'])}")
    return [Claim(**c) for c in entry]
