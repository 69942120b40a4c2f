import torch

from rlhf.rollout.hf_engine import response_mask_from_ids, truncate_at_stop


def test_response_mask_eos_included_and_padding_excluded():
    ids = torch.tensor([[5, 6, 2, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    mask, finished = response_mask_from_ids(ids, {2}, pad_id=2)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]


def test_response_mask_distinct_pad_ends_without_being_counted():
    mask, finished = response_mask_from_ids(torch.tensor([[5, 0, 0, 0], [5, 9, 3, 0]]), {3}, pad_id=0)
    assert mask.tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]
    assert finished.tolist() == [True, True]


def test_truncate_at_stop():
    assert truncate_at_stop("a b. c. d", [". "]) == ("a b. ", True)
    assert truncate_at_stop("x ## y\nz", ["\n", "##"]) == ("x ##", True)
    assert truncate_at_stop("none here", ["###"]) == ("none here", False)
