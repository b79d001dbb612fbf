import pytest
import torch

from mmdiff.data.dataset import Dataset


def make(n=6, k=3):
    data = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    return Dataset(data, torch.arange(n) % k, [f"c{i}" for i in range(k)], "toy")


def test_properties():
    ds = make()
    assert len(ds) == 6 and ds.num_classes == 3 and ds.shape == (1, 2, 2)
    assert ds.class_counts() == [2, 2, 2]
    assert Dataset(torch.zeros(2, 1, 3), torch.tensor([0, 0]), ["a", "b"], "x").class_counts() == [2, 0]


def test_subset_keeps_order_classes_and_name():
    ds = make()
    sub = ds.subset([4, 1])
    assert torch.equal(sub.data, ds.data[[4, 1]]) and sub.labels.tolist() == [1, 1]
    assert sub.class_names == ds.class_names and sub.name == "toy" and sub.class_counts() == [0, 2, 0]
    assert len(ds.subset(torch.tensor([0]))) == 1
    assert len(ds.subset(slice(0, 3))) == 3
    assert ds.subset(ds.labels == 2).labels.tolist() == [2, 2]
    assert len(ds.subset([])) == 0


@pytest.mark.parametrize("data, labels, match", [
    (torch.zeros(3, 1, 2), torch.tensor([0, 1]), "3 samples but 2 labels"),
    (torch.zeros(2, 1, 2), torch.tensor([0, 3]), "labels must lie in"),
    (torch.zeros(2, 1, 2), torch.tensor([-1, 0]), "labels must lie in"),
    (torch.zeros(2, 1, 2), torch.tensor([0.0, 1.0]), "int64"),
    (torch.zeros(2, 1, 2, dtype=torch.uint8), torch.tensor([0, 1]), "floating"),
    (torch.zeros(2), torch.tensor([0, 1]), "N, C"),
])
def test_validation(data, labels, match):
    with pytest.raises(ValueError, match=match):
        Dataset(data, labels, ["a", "b", "c"], "bad")
