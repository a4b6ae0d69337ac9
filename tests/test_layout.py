import pytest
import torch

from l2o.layout import Layout


def test_layout_packs_in_order_and_round_trips():
    layout = Layout.from_shapes({"w": (3, 2), "b": (2,), "s": ()})
    assert layout.num_params == 9
    assert [s.offset for s in layout.specs] == [0, 6, 8]
    x = torch.arange(18.0).view(2, 9)
    parts = layout.unflatten(x)
    assert parts["w"].shape == (2, 3, 2) and parts["s"].shape == (2,)
    assert torch.equal(parts["b"][1], torch.tensor([15.0, 16.0]))
    assert torch.equal(layout.flatten(parts), x)
    assert layout.segment_ids().tolist() == [0] * 6 + [1, 1, 2]


def test_layout_unknown_name_lists_names():
    layout = Layout.from_shapes({"w": (2,)})
    with pytest.raises(KeyError, match="tensors are"):
        layout["nope"]
