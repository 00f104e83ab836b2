import os

import numpy as np
import pytest
import torch

from mrl_hf.adaptor import MatryoshkaAdaptor, pca_rotation
from mrl_hf.distillation import similarity_distillation_loss

@pytest.fixture(autouse=True)
def _one_thread():
    # These tests run many tiny matmuls; on cores shared with other jobs, 2 threads are far slower than 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def _clustered(n, dim=32, clusters=12, seed=0):
    """Embeddings with cluster structure spread over all dims, normalised like a sentence encoder's."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_fresh_adaptor_is_the_identity_on_normalised_vectors():
    x = _clustered(20)
    out = MatryoshkaAdaptor(32).transform(3 * x)
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_numpy_in_numpy_out_torch_in_torch_out():
    x = _clustered(10)
    adaptor = MatryoshkaAdaptor(32, [8, 32])
    out = adaptor.transform(x, dim=8)
    assert isinstance(out, np.ndarray) and out.shape == (10, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    t = adaptor.transform(torch.from_numpy(x), dim=8, normalize=False)
    assert isinstance(t, torch.Tensor) and t.shape == (10, 8)


def test_pca_rotation_orders_axes_by_variance_and_spans_sklearns_subspace():
    from sklearn.decomposition import PCA

    x = _clustered(400)
    z = pca_rotation(x).transform(x, normalize=False)
    variances = z.var(0)
    assert np.all(np.diff(variances) <= 1e-6)
    reference = PCA(8).fit(x).components_  # (8, 32)
    ours = pca_rotation(x).linear.weight.detach().numpy()[:8]
    # same 8-dim subspace: the projection of sklearn's axes onto ours keeps their full length
    np.testing.assert_allclose(np.linalg.norm(reference @ ours.T, axis=1), 1.0, atol=1e-4)


def test_uncentred_pca_rotation_keeps_full_dim_cosines_exactly():
    x = _clustered(100)
    z = pca_rotation(x, center=False).transform(x)
    np.testing.assert_allclose(z @ z.T, x @ x.T, atol=1e-5)


def test_fit_lowers_the_held_out_objective_below_its_pca_start():
    vectors = _clustered(2300)
    train, test = vectors[:2000], vectors[2000:]  # unseen vectors from the same clusters
    dims = [4, 8, 32]
    pca = pca_rotation(train, dims)
    adaptor = MatryoshkaAdaptor(32, dims, hidden_dim=64).fit(train, epochs=10, batch_size=256, lr=3e-3)
    teacher = torch.from_numpy(test) - adaptor.mean  # fit's default target: similarities after removing the mean

    def held_out_loss(model):
        with torch.no_grad():
            return similarity_distillation_loss(model(torch.from_numpy(test)), teacher, dims, top_k=5).per_dim_losses

    ours, baseline = held_out_loss(adaptor), held_out_loss(pca)
    # PCA is the best rank-m linear fit of the centred similarities, so the gain is local/nonlinear and small
    # (measured 0.963x in sum, 0.943x at dim 4); the real-data test measures retrieval.
    assert ours.sum() < 0.98 * baseline.sum(), (ours, baseline)
    assert ours[0] < 0.97 * baseline[0], (ours, baseline)
    assert ours[-1] < 0.01, ours  # the full dim reproduces the input's similarities


def test_fit_matches_centred_similarities_by_default_and_raw_ones_on_request():
    x = _clustered(400)
    dims = [4, 32]
    centred = MatryoshkaAdaptor(32, dims, hidden_dim=0).fit(x, epochs=3, batch_size=128)
    raw = MatryoshkaAdaptor(32, dims, hidden_dim=0).fit(x, epochs=3, batch_size=128, center_teacher=False)
    vectors = torch.from_numpy(x)

    def loss(model, teacher):
        with torch.no_grad():
            return similarity_distillation_loss(model(vectors), teacher, dims, top_k=5).loss.item()

    shared = vectors - centred.mean
    assert loss(centred, shared) < loss(raw, shared)
    assert loss(raw, vectors) < loss(centred, vectors)


def test_fit_is_deterministic_for_a_seed():
    x = _clustered(300)
    a = MatryoshkaAdaptor(32, [8, 32], hidden_dim=16).fit(x, epochs=2, batch_size=64, seed=3)
    b = MatryoshkaAdaptor(32, [8, 32], hidden_dim=16).fit(x, epochs=2, batch_size=64, seed=3)
    np.testing.assert_allclose(a.transform(x, 8), b.transform(x, 8), atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    x = _clustered(300)
    adaptor = MatryoshkaAdaptor(32, [8, 16, 32], hidden_dim=24).fit(x, epochs=1, batch_size=64)
    adaptor.save_pretrained(tmp_path / "adaptor")
    assert sorted(n for n in os.listdir(tmp_path / "adaptor") if not n.startswith(".")) == ["adaptor.safetensors",
                                                                                      "adaptor_config.json"]
    loaded = MatryoshkaAdaptor.from_pretrained(tmp_path / "adaptor")
    assert loaded.nesting_list == [8, 16, 32] and loaded.hidden_dim == 24
    np.testing.assert_array_equal(loaded.transform(x, 16), adaptor.transform(x, 16))
    pca = pca_rotation(x)
    pca.save_pretrained(tmp_path / "pca")
    np.testing.assert_array_equal(MatryoshkaAdaptor.from_pretrained(tmp_path / "pca").transform(x, 8),
                                  pca.transform(x, 8))


def test_loading_a_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        MatryoshkaAdaptor.from_pretrained(tmp_path)


def test_nan_rows_are_reported():
    x = _clustered(50)
    x[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*1 row.*row 7"):
        MatryoshkaAdaptor(32).fit(x, epochs=1)
    with pytest.raises(ValueError, match="NaN"):
        pca_rotation(x)
    with pytest.raises(ValueError, match="NaN"):
        MatryoshkaAdaptor(32).transform(x)


def test_dim_mismatch_empty_and_wrong_types_are_reported():
    adaptor = MatryoshkaAdaptor(32)
    with pytest.raises(ValueError, match="dim 16, but this adaptor was built for dim 32"):
        adaptor.transform(np.zeros((4, 16), np.float32))
    with pytest.raises(ValueError, match="empty"):
        adaptor.fit(np.zeros((0, 32), np.float32))
    with pytest.raises(ValueError, match="empty"):
        pca_rotation(np.zeros((0, 32), np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, dim\)"):
        adaptor.transform(np.zeros(32, np.float32))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        adaptor.transform([[0.0] * 32])
    with pytest.raises(TypeError, match="must hold floats"):
        adaptor.transform(np.zeros((4, 32), np.int64))
    with pytest.raises(ValueError, match="dim=64 is out of range"):
        adaptor.transform(_clustered(4), dim=64)
    with pytest.raises(ValueError, match="init='svd'"):
        adaptor.fit(_clustered(10), init="svd")
    with pytest.raises(ValueError, match="embedding dim is 32"):
        MatryoshkaAdaptor(32, nesting_list=[8, 16])


def test_pairs_add_the_supervised_term_that_brings_each_pair_together():
    """The Matryoshka-Adaptor paper's supervised variant: with (query, positive) pairs whose relation the unlabelled
    similarities do not show, the small prefixes rank each query's positive higher than without the pairs."""
    g = torch.Generator().manual_seed(0)
    corpus = torch.randn(600, 32, generator=g)
    queries = torch.randn(200, 32, generator=g)
    positives = queries.flip(1) + 0.1 * torch.randn(200, 32, generator=g)  # related through a reversal of features

    def rank_of_positive(adaptor, m=8):
        q, p = adaptor.transform(queries[100:], m), adaptor.transform(positives[100:], m)
        sims = torch.as_tensor(q) @ torch.as_tensor(p).T
        return float((sims > sims.diag()[:, None]).sum(1).float().mean())

    plain = MatryoshkaAdaptor(32, [8, 16, 32]).fit(corpus, epochs=20, batch_size=64, lr=3e-3)
    supervised = MatryoshkaAdaptor(32, [8, 16, 32]).fit(corpus, epochs=20, batch_size=64, lr=3e-3,
                                                        pairs=(queries[:100], positives[:100]), pair_weight=2.0)
    assert rank_of_positive(supervised) < 0.5 * rank_of_positive(plain), (rank_of_positive(supervised),
                                                                          rank_of_positive(plain))
    with pytest.raises(ValueError, match="pairs must be"):
        MatryoshkaAdaptor(32, [8, 32]).fit(corpus, epochs=1, pairs=queries)
    with pytest.raises(ValueError, match="100 queries and 99 positives"):
        MatryoshkaAdaptor(32, [8, 32]).fit(corpus, epochs=1, pairs=(queries[:100], positives[:99]))
    with pytest.raises(ValueError, match="100 distinct queries and 1 distinct positives"):
        MatryoshkaAdaptor(32, [8, 32]).fit(corpus, epochs=1, pairs=(queries[:100], positives[:1].repeat(100, 1)))


def test_pair_batches_never_repeat_a_query_or_a_positive():
    """Many queries of one document: a batch holding two of them would take the document (its own positive) for a
    negative of the other. Each batch keeps one pair per query and per positive, and still fills up when it can."""
    from mrl_hf.adaptor import distinct_pair_batch

    query_groups = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 7, 8])
    positive_groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 4, 5, 6])  # pairs 7 and 8 share query 7
    g = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(50):
        batch = distinct_pair_batch((query_groups.tolist(), positive_groups.tolist()), 16, g)
        assert len(set(positive_groups[batch].tolist())) == len(batch)
        assert len(set(query_groups[batch].tolist())) == len(batch)
        sizes.add(len(batch))
    assert sizes == {6}  # one pair of positive groups 0, 1, 2, 3, 6, and one of 4 / 5 (their query is shared)
    assert len(distinct_pair_batch((query_groups.tolist(), positive_groups.tolist()), 3, g)) == 3
    # (q0, p0), (q0, p1), (q1, p0): a draw that takes (q0, p0) first leaves one pair, whose InfoNCE is 0: drawn again
    sizes = [len(distinct_pair_batch(([0, 0, 1], [0, 1, 0]), 8, torch.Generator().manual_seed(s))) for s in range(20)]
    assert sizes == [2] * 20


def test_fit_can_train_the_prefixes_as_the_codes_they_will_be_served_as():
    x = _clustered(200)
    plain = MatryoshkaAdaptor(32, [8, 16, 32]).fit(x, epochs=3, batch_size=64)
    coded = MatryoshkaAdaptor(32, [8, 16, 32]).fit(x, epochs=3, batch_size=64, precisions={"binary": [8]})
    assert not torch.equal(plain.linear.weight, coded.linear.weight)  # the binary term at 8 dims took part
    with pytest.raises(ValueError, match="binary"):
        MatryoshkaAdaptor(32, [8, 16, 32]).fit(x, epochs=1, precisions={"int4": [8]})


def test_the_distillation_trainer_trains_the_codes_its_config_lists(tmp_path):
    from transformers import TrainingArguments

    from mrl_hf.distillation import MatryoshkaDistillationTrainer
    from mrl_hf.modeling import MRLBertConfig, MRLBertModel

    model = MRLBertModel(MRLBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, nesting_list=[4, 8, 16], precisions={"binary": [8]}))
    trainer = MatryoshkaDistillationTrainer(model=model, args=TrainingArguments(tmp_path, report_to=[], use_cpu=True),
                                            train_dataset=[])
    assert trainer.distillation_loss.precisions == {"float32": [4, 8, 16], "binary": [8]}


def test_a_refused_attach_leaves_the_model_as_it_was(tmp_path):
    """attach_adaptor checks before it changes anything: an adaptor whose sizes do not fit the model's settings is
    refused and the model still saves; a model without an adaptor slot (the masked LM) is refused."""
    from mrl_hf.adaptor import attach_adaptor
    from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM, MRLBertModel

    tiny = dict(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = MRLBertModel(MRLBertConfig(**tiny, nesting_list=[8, 16, 32], relative_importance=[1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="relative_importance"):
        attach_adaptor(model, MatryoshkaAdaptor(32, [4, 8, 16, 32], hidden_dim=0))
    assert model.adaptor is None and model.config.adaptor is None and model.config.nesting_list == [8, 16, 32]
    model.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="no adaptor slot"):
        attach_adaptor(MRLBertForMaskedLM(MRLBertConfig(**tiny, nesting_list=[8, 16, 32])),
                       MatryoshkaAdaptor(32, [8, 16, 32], hidden_dim=0))


def test_a_refused_fit_keeps_the_trained_adaptor():
    """The PCA start and a new MLP layer were set before the arguments were checked: a refused refit threw away the
    trained weights."""
    x = _clustered(64)
    adaptor = MatryoshkaAdaptor(32, [8, 16, 32]).fit(x, epochs=2, batch_size=16)
    before = adaptor.transform(x, dim=8)
    for bad, said in ((dict(pairs=(x[:5], x[:4])), "pairs hold 5 queries and 4 positives"),
                      (dict(relative_importance=[1.0, 2.0]), "relative_importance"),
                      (dict(precisions=["int3"]), "int3"), (dict(binary_surrogate="sign"), "sign"),
                      (dict(batch_size=0), "batch_size=0"), (dict(top_k=0), "top_k=0"),
                      (dict(listwise_temperature=0), "listwise_temperature=0"), (dict(lr=-1), "lr=-1")):
        with pytest.raises(ValueError, match=said):
            adaptor.fit(x, **{"epochs": 2, "batch_size": 16, **bad})
        np.testing.assert_array_equal(adaptor.transform(x, dim=8), before)
        assert not adaptor.training


def test_a_half_precision_adaptor_still_gives_float32_numpy():
    """attach_adaptor moves the adaptor to a bfloat16 model's dtype; transform then failed in numpy ("unsupported
    ScalarType BFloat16")."""
    from mrl_hf.adaptor import attach_adaptor
    from mrl_hf.modeling import MRLBertConfig, MRLBertModel

    x = _clustered(16)
    adaptor = MatryoshkaAdaptor(32, [8, 16, 32], hidden_dim=0)
    reference = adaptor.transform(x, dim=8)
    model = MRLBertModel(MRLBertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, nesting_list=[8, 16, 32])).to(torch.bfloat16)
    attach_adaptor(model, adaptor)
    assert model.adaptor is adaptor and adaptor.linear.weight.dtype == torch.bfloat16  # as documented
    out = adaptor.transform(x, dim=8)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=0.02)


def test_attaching_an_adaptor_without_the_default_size_serves_the_full_size_and_says_so(tmp_path):
    from mrl_hf.adaptor import attach_adaptor
    from mrl_hf.contract import inspect_checkpoint
    from mrl_hf.modeling import MRLBertConfig, MRLBertModel

    tiny = dict(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = MRLBertModel(MRLBertConfig(**tiny, nesting_list=[8, 16, 32], truncate_dim=8))
    with pytest.warns(UserWarning, match=r"truncate_dim=8 is not in nesting_list=\[4, 16, 32\].*full size"):
        attach_adaptor(model, MatryoshkaAdaptor(32, [4, 16, 32], hidden_dim=0))
    assert model.config.truncate_dim is None
    model.save_pretrained(tmp_path)  # mrl-hf inspect flagged the untrained default size (and vLLM refuses it)
    assert not [p for p in inspect_checkpoint(tmp_path).problems if "truncate_dim" in str(p)]
    kept = MRLBertModel(MRLBertConfig(**tiny, nesting_list=[8, 16, 32], truncate_dim=16))
    attach_adaptor(kept, MatryoshkaAdaptor(32, [4, 16, 32], hidden_dim=0))
    assert kept.config.truncate_dim == 16
