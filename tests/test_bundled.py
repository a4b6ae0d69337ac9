"""The optimizers shipped in the package load by name, carry honest cards, and run."""

import pytest
import torch

import l2o
from l2o.bundled import bundled_cards, bundled_names, bundled_path


def test_at_least_dm_cl_il_is_bundled():
    assert "dm-cl-il" in bundled_names()


@pytest.mark.filterwarnings("ignore:the bundled optimizer")  # scale-cl-il: tested below
@pytest.mark.parametrize("name", bundled_names())
def test_bundled_optimizer_loads_by_name_with_its_card(name):
    card = bundled_cards()[name]
    for key in ("recipe", "budget", "training_seconds", "trained_on", "known_failures"):
        assert card.get(key), f"{name}: card lacks {key}"
    for task, result in card["evaluation"].items():
        assert task in l2o.TASKS and result["seeds"] >= 1 and "adam" in result
    rule = l2o.load_rule(name)
    assert rule.name == card["model"]
    model = torch.nn.Linear(3, 2)
    opt = l2o.LearnedOptimizer(model.parameters(), name)
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_unknown_bundled_name_is_named_in_the_error():
    with pytest.raises(ValueError, match="no bundled optimizer 'dm-xl'"):
        bundled_path("dm-xl")
    with pytest.raises(ValueError, match="bundled optimizer"):
        l2o.load_rule("dm-xl")


@pytest.mark.parametrize("name", bundled_names())
def test_loading_warns_only_for_an_optimizer_that_always_diverged(name, recwarn):
    evaluation = bundled_cards()[name]["evaluation"]
    always = all(result["final_ln_loss"] is None for result in evaluation.values())
    l2o.load_rule(name)
    warned = [w for w in recwarn if "diverged on every task" in str(w.message)]
    assert len(warned) == (1 if always else 0)
