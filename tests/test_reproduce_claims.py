"""The paper's claims judged from our numbers (l2o.reproduce.claims)."""

import pytest

from l2o.reproduce import FIGURES, Claim, judge
from l2o.reproduce.claims import (
    FAILS,
    HOLDS,
    HOLDS_EVERY_SEED,
    HOLDS_MEDIAN,
    NOT_MEASURED,
    verdict_rows,
)

CLAIM = Claim("L2O-DM-CL-IL", "L2O-DM", "CL + IL beats plain L2O-DM")


@pytest.mark.parametrize(
    ("better", "worse", "verdict"),
    [
        ([-8.0, -7.0, -6.0], [-3.0, -2.0, -1.0], HOLDS_EVERY_SEED),
        # the medians are in order, but one seed of each side crosses the other's
        ([-8.0, -7.0, -2.5], [-3.0, -2.0, -1.0], HOLDS_MEDIAN),
        ([-2.0, -1.0, 0.0], [-3.0, -2.0, -1.0], FAILS),
        ([-2.0], [-2.0], FAILS),  # a tie is no improvement
        ([-5.0], [-2.0], HOLDS),
        ([-5.0, -4.0], [], NOT_MEASURED),
        ([], [-2.0], NOT_MEASURED),
    ],
)
def test_a_claim_holds_on_every_seed_in_the_median_or_not(better, worse, verdict):
    v = judge(CLAIM, "mlp-orig", better, worse)
    assert v.verdict == verdict
    assert v.to_dict()["verdict"] == verdict


def test_the_table_gives_both_medians_and_the_margin():
    rows = verdict_rows(
        [
            judge(CLAIM, "mlp-orig", [-8.0, -6.0, -7.0], [-1.0, -3.0, -2.0]),
            judge(CLAIM, "mlp-relu", [], [-1.0]),
        ]
    )
    assert rows[2] == (
        "| CL + IL beats plain L2O-DM | mlp-orig | L2O-DM-CL-IL -7.00 vs L2O-DM -2.00 (by +5.00) "
        f"| {HOLDS_EVERY_SEED} |"
    )
    assert rows[3] == f"| CL + IL beats plain L2O-DM | mlp-relu | - | {NOT_MEASURED} |"


def test_a_verdict_with_training_seeds_to_come_says_it_is_provisional():
    v = judge(CLAIM, "mlp-orig", [-8.0, -7.0], [-3.0, -2.0, -1.0], pending=1)
    assert v.verdict == HOLDS_EVERY_SEED and v.to_dict()["pending"] == 1
    row = verdict_rows([v])[2]
    assert row.endswith(f"| {HOLDS_EVERY_SEED} (so far: 1 training seed to come) |")
    # nothing measured on one side: nothing to call provisional
    assert judge(CLAIM, "mlp-orig", [], [-3.0], pending=3).pending == 0


def test_every_claim_names_curves_of_its_figure():
    for fig in FIGURES.values():
        labels = {c.label for c in fig.curves}
        for claim in fig.claims:
            assert claim.better in labels and claim.worse in labels, (fig.name, claim)
    assert len(FIGURES["techniques"].claims) == 6 and len(FIGURES["fig5"].claims) == 3
