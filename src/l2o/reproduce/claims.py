"""The paper's claims about a figure's curves, and whether our numbers bear them out.

Chen et al. (2020) claim an ordering: a curriculum (CL) and imitation (IL) each make L2O-DM better,
both together best (Figures 3 and 5, docs/method.md section 7). A :class:`Claim` names one such
comparison by the curves' labels; :func:`judge` says, per task, whether our final ln losses show
it, and how firmly: on every training seed, only in the median, or not at all. With one training
seed the checkpoint kept is partly chance, which is why the verdict keeps "every seed" and "the
median" apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HOLDS_EVERY_SEED = "holds on every training seed"
HOLDS_MEDIAN = "holds in the median; the training seeds' ranges overlap"
HOLDS = "holds (one value on each side)"
FAILS = "does not hold"
NOT_MEASURED = "not measured yet"


@dataclass(frozen=True)
class Claim:
    """``better`` reaches a lower final ln loss than ``worse`` (labels of a figure's curves or
    baselines); ``text`` says it in the paper's words."""

    better: str
    worse: str
    text: str


@dataclass(frozen=True)
class Verdict:
    """How one claim stands on one task: each side's values (one per training seed; a baseline
    has one), their medians and the verdict (one of this module's constants). ``pending`` counts
    the training seeds of either side not evaluated yet: a verdict with some pending is
    provisional (a run stopped part way reports what it has)."""

    claim: Claim
    task: str
    better_values: tuple[float, ...]
    worse_values: tuple[float, ...]
    verdict: str
    pending: int = 0

    @property
    def better_median(self) -> float | None:
        return float(np.median(self.better_values)) if self.better_values else None

    @property
    def worse_median(self) -> float | None:
        return float(np.median(self.worse_values)) if self.worse_values else None

    def to_dict(self) -> dict:
        return {
            "claim": self.claim.text,
            "better": self.claim.better,
            "worse": self.claim.worse,
            "task": self.task,
            "better_median": self.better_median,
            "worse_median": self.worse_median,
            "better_values": list(self.better_values),
            "worse_values": list(self.worse_values),
            "verdict": self.verdict,
            "pending": self.pending,
        }


def judge(
    claim: Claim, task: str, better: Sequence[float], worse: Sequence[float], pending: int = 0
) -> Verdict:
    """The verdict of ``claim`` on ``task`` from each side's finite final ln losses (diverged
    training seeds left out by the caller; an empty side is "not measured yet"); ``pending``
    training seeds are still to be evaluated (the verdict says it is provisional)."""
    a, b = tuple(float(v) for v in better), tuple(float(v) for v in worse)
    if not a or not b:
        verdict = NOT_MEASURED
    elif np.median(a) >= np.median(b):
        verdict = FAILS
    elif len(a) == 1 and len(b) == 1:
        verdict = HOLDS
    elif max(a) < min(b):
        verdict = HOLDS_EVERY_SEED
    else:
        verdict = HOLDS_MEDIAN
    return Verdict(claim, task, a, b, verdict, pending if verdict != NOT_MEASURED else 0)


def verdict_rows(verdicts: Sequence[Verdict]) -> list[str]:
    """A markdown table of ``verdicts``: claim, task, both medians (and the margin), verdict."""
    rows = ["| claim | task | ours (median final ln loss) | verdict |", "|---|---|---|---|"]
    for v in verdicts:
        if v.verdict == NOT_MEASURED:
            ours = "-"
        else:
            ours = (
                f"{v.claim.better} {v.better_median:.2f} vs {v.claim.worse} "
                f"{v.worse_median:.2f} (by {v.worse_median - v.better_median:+.2f})"
            )
        verdict = v.verdict
        if v.pending:
            seeds = f"{v.pending} training seed" + ("s" if v.pending != 1 else "")
            verdict += f" (so far: {seeds} to come)"
        rows.append(f"| {v.claim.text} | {v.task} | {ours} | {verdict} |")
    return rows
