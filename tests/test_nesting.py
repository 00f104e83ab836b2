import numpy as np
import pytest
import torch

from mrl_hf import halving_nesting_list, interpolated_dims, truncate_embeddings, uniform_nesting_list, validate_nesting_list


def test_halving_lists_of_the_paper():
    assert halving_nesting_list(2048) == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert halving_nesting_list(768) == [12, 24, 48, 96, 192, 384, 768]
    assert halving_nesting_list(384) == [12, 24, 48, 96, 192, 384]
    assert halving_nesting_list(64, min_dim=2) == [2, 4, 8, 16, 32, 64]
    assert halving_nesting_list(100) == [12, 25, 50, 100]  # halving rounds down
    assert halving_nesting_list(5, min_dim=5) == [5]
    size = torch.tensor(64)  # a tensor or numpy size: plain ints back, the caller's value untouched
    assert halving_nesting_list(size) == [8, 16, 32, 64] and size.item() == 64
    assert all(type(m) is int for m in halving_nesting_list(np.int64(64)))
    assert uniform_nesting_list(torch.tensor(64), min_dim=16, num=np.int64(4)) == [16, 32, 48, 64]


def test_uniform_list_is_the_paper_ablation():
    assert uniform_nesting_list(2048) == [8, 212, 416, 620, 824, 1028, 1232, 1436, 1640, 1844, 2048]
    assert uniform_nesting_list(64, min_dim=16, num=4) == [16, 32, 48, 64]
    assert uniform_nesting_list(10, num=1) == [10]


def test_interpolated_dims_lie_between_neighbours():
    assert interpolated_dims([8, 16, 32, 64]) == [12, 24, 48]
    assert interpolated_dims([3, 4, 10]) == [7]  # (3+4)//2 == 3 is already in the list


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "empty"),
        ([16, 8, 32], "not strictly increasing"),
        ([8, 8, 32], "duplicate"),
        ([0, 32], "contains 0"),
        ([-4, 32], "contains -4"),
        ([8, 16], "ends with 16, but the embedding dim is 32"),
    ],
)
def test_invalid_nesting_lists_name_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_nesting_list(bad, dim=32)


@pytest.mark.parametrize("bad", ["8,16", [8.0, 32], [True, 32], None])
def test_nesting_list_type_errors(bad):
    with pytest.raises(TypeError):
        validate_nesting_list(bad, dim=32)


def test_numpy_ints_are_accepted():
    assert validate_nesting_list(np.array([4, 8]), dim=8) == [4, 8]


def test_halving_rejects_min_dim_above_dim():
    with pytest.raises(ValueError, match="min_dim=16 is larger than dim=8"):
        halving_nesting_list(8, min_dim=16)


def test_truncate_slices_then_normalises():
    x = torch.tensor([[3.0, 4.0, 12.0]])
    out = truncate_embeddings(x, 2, normalize=True)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8]]))
    # Normalising first and slicing second would give [3/13, 4/13]: a prefix that is not unit length.
    assert torch.allclose(out.norm(dim=-1), torch.ones(1))
    assert torch.equal(truncate_embeddings(x, 2), x[:, :2])
    assert truncate_embeddings(x, None) is x


def test_truncate_numpy_keeps_type_and_any_leading_shape():
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    out = truncate_embeddings(x, 4, normalize=True)
    assert isinstance(out, np.ndarray) and out.shape == (2, 5, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


def test_truncate_normalises_half_precision_without_overflow_or_nan():
    """A float16 norm overflows past 65504 and its eps floor rounds to 0: half precision is normalised in float32
    and given back in its own dtype; a zero prefix stays 0, not NaN."""
    big = np.full((1, 64), 50, np.float16)
    for x in (big, torch.from_numpy(big), torch.from_numpy(big).bfloat16()):
        out = truncate_embeddings(x, 32, normalize=True)
        assert out.dtype == x.dtype
        values = out.float().numpy() if isinstance(out, torch.Tensor) else out.astype(np.float32)
        np.testing.assert_allclose(values, 1 / np.sqrt(32), rtol=1e-2)
    for zero in (np.zeros((1, 8), np.float16), torch.zeros(1, 8, dtype=torch.float16)):
        out = truncate_embeddings(zero, 4, normalize=True)
        assert not np.isnan(np.asarray(out, dtype=np.float32)).any()


@pytest.mark.parametrize("dim, err", [(0, ValueError), (9, ValueError), (2.5, TypeError)])
def test_truncate_rejects_bad_dims(dim, err):
    with pytest.raises(err, match="dim"):
        truncate_embeddings(torch.zeros(3, 8), dim)


def test_truncate_rejects_lists():
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        truncate_embeddings([[1.0, 2.0]], 1)
