"""Asymmetric adaptors: fitted on the documents, queries centred on their own mean (``fit(..., queries=...)``).

Checked here on tiny inputs: the maps are the ones documented, the query side is picked by ``task="query"``
everywhere a user embeds text (the adaptor, ``MRLBertModel.encode_query``, sentence-transformers loading the saved
folder or the export, mteb, the recipes' evaluation), it survives save/load, and the settings that would embed queries
as documents are refused. The real-data gain is in tests/test_matryoshkafy_corpus.py.
"""
import json

import numpy as np
import pytest
import torch

from mrl_hf.adaptor import MatryoshkaAdaptor, attach_adaptor, pca_rotation


def _vectors(n, shift=0.0, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) + shift
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


DOCS, QUERIES = _vectors(300), _vectors(120, shift=0.8, seed=1)


def test_pca_rotation_with_queries_uses_the_documents_axes_and_the_queries_own_mean():
    pca = pca_rotation(DOCS, [8, 16, 32], queries=QUERIES)
    plain = pca_rotation(DOCS, [8, 16, 32])
    assert pca.asymmetric and not plain.asymmetric
    torch.testing.assert_close(pca.linear.weight, plain.linear.weight)  # the documents' principal axes alone
    torch.testing.assert_close(pca.mean, torch.from_numpy(DOCS.mean(0)), rtol=0, atol=1e-6)
    torch.testing.assert_close(pca.query_mean, torch.from_numpy(QUERIES.mean(0)), rtol=0, atol=1e-6)
    x = _vectors(5, seed=2)
    w = pca.linear.weight.detach().numpy()
    for task, mean in (("query", QUERIES.mean(0)), ("document", DOCS.mean(0)), (None, DOCS.mean(0))):
        expected = (x - mean) @ w.T
        expected = expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)
        np.testing.assert_allclose(pca.transform(x, dim=8, task=task), expected, atol=1e-5)
    assert np.abs(pca.transform(x, task="query") - pca.transform(x)).max() > 0.1


def test_fit_with_queries_trains_on_the_documents_only():
    """The same fit as without queries (same weights, same seed): only the query centre is added."""
    asym = MatryoshkaAdaptor(32, [8, 32], hidden_dim=16).fit(DOCS, epochs=2, queries=QUERIES)
    sym = MatryoshkaAdaptor(32, [8, 32], hidden_dim=16).fit(DOCS, epochs=2)
    assert set(asym.state_dict()) - set(sym.state_dict()) == {"query_mean"}
    for name, value in sym.state_dict().items():
        torch.testing.assert_close(asym.state_dict()[name], value, msg=name)
    torch.testing.assert_close(asym.query_mean, torch.from_numpy(QUERIES.mean(0)), rtol=0, atol=1e-6)
    x = _vectors(6, seed=3)
    np.testing.assert_allclose(asym.transform(x, task="document"), sym.transform(x), atol=1e-6)
    manual = asym.linear(torch.from_numpy(x) - asym.query_mean)
    manual = manual + asym.mlp(manual)
    np.testing.assert_allclose(asym.transform(x, task="query", normalize=False), manual.detach().numpy(), atol=1e-5)


def test_a_symmetric_adaptor_embeds_queries_and_documents_alike():
    adaptor = pca_rotation(DOCS, [8, 32])
    np.testing.assert_array_equal(adaptor.transform(QUERIES, task="query"), adaptor.transform(QUERIES))


def test_save_and_load_keep_the_query_mean(tmp_path):
    adaptor = MatryoshkaAdaptor(32, [8, 32], hidden_dim=8).fit(DOCS, epochs=1, queries=QUERIES)
    adaptor.save_pretrained(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adaptor_config.json").read_text())["asymmetric"] is True
    loaded = MatryoshkaAdaptor.from_pretrained(tmp_path / "a")
    assert loaded.asymmetric
    np.testing.assert_array_equal(loaded.transform(QUERIES, task="query"), adaptor.transform(QUERIES, task="query"))
    pca_rotation(DOCS).save_pretrained(tmp_path / "b")  # a symmetric adaptor's files are unchanged
    assert "asymmetric" not in json.loads((tmp_path / "b" / "adaptor_config.json").read_text())


def test_bad_task_and_queries_are_refused_with_the_value():
    adaptor = pca_rotation(DOCS, queries=QUERIES)
    with pytest.raises(ValueError, match="task='queries' is not supported; use 'query', 'document'"):
        adaptor.transform(DOCS, task="queries")
    with pytest.raises(ValueError, match="center=False"):
        pca_rotation(DOCS, center=False, queries=QUERIES)
    with pytest.raises(ValueError, match="queries has dim 16"):
        MatryoshkaAdaptor(32).fit(DOCS, epochs=1, queries=QUERIES[:, :16])


@pytest.fixture
def asymmetric_model(tiny_checkpoint):
    """The tiny MRLBertModel with an asymmetric adaptor (residual MLP) fitted on random vectors."""
    from mrl_hf.modeling import MRLBertModel

    path, _ = tiny_checkpoint
    model = MRLBertModel.from_pretrained(path).eval()
    adaptor = MatryoshkaAdaptor(32, [8, 16, 32], hidden_dim=16).fit(DOCS, epochs=2, queries=QUERIES)
    return attach_adaptor(model, adaptor)


TEXTS = ["how do I reset my password", "a film about a cat who sails", "open settings and choose reset"]


def test_the_model_embeds_queries_with_encode_query_and_keeps_it_through_save_and_load(asymmetric_model, tmp_path):
    from mrl_hf.modeling import MRLBertModel

    model = asymmetric_model
    query, document = model.encode_query(TEXTS), model.encode_document(TEXTS)
    np.testing.assert_array_equal(document, model.encode(TEXTS))  # documents are the default, as in s-t
    assert np.abs(query - document).max() > 0.05
    raw = model.encode(TEXTS, truncate_dim=32, normalize=False)  # what the adaptor maps, rebuilt by hand
    base = MRLBertModel.from_pretrained(model.config._name_or_path).eval()
    pooled = base.encode(TEXTS, truncate_dim=32, normalize=False)
    np.testing.assert_allclose(raw, model.adaptor.transform(pooled, normalize=False), atol=1e-5)
    np.testing.assert_allclose(model.encode_query(TEXTS, truncate_dim=8, normalize=True),
                               model.adaptor.transform(pooled, dim=8, task="query"), atol=1e-5)
    with pytest.raises(ValueError, match="task='passage'"):
        model.encode(TEXTS, task="passage")
    model.save_pretrained(tmp_path / "saved")
    loaded = MRLBertModel.from_pretrained(tmp_path / "saved")
    assert loaded.config.adaptor["asymmetric"] is True
    np.testing.assert_array_equal(loaded.encode_query(TEXTS), query)


def test_sentence_transformers_routes_queries_in_the_saved_folder_and_in_the_export(asymmetric_model, tmp_path):
    """``SentenceTransformer(folder).encode_query`` reaches the query mean: the mrl_hf folder passes ``task`` to the
    model's forward; the plain export holds a ``Router`` (query route, document route = the default)."""
    from sentence_transformers import SentenceTransformer

    from mrl_hf.export import export_sentence_transformers

    model = asymmetric_model
    query = model.encode_query(TEXTS, normalize=False)
    document = model.encode_document(TEXTS, normalize=False)
    model.save_pretrained(tmp_path / "saved")
    export_sentence_transformers(model, tmp_path / "exported")
    for folder in ("saved", "exported"):
        st = SentenceTransformer(str(tmp_path / folder), device="cpu", trust_remote_code=True)
        np.testing.assert_allclose(st.encode_query(TEXTS), query, atol=1e-5, err_msg=folder)
        np.testing.assert_allclose(st.encode_document(TEXTS), document, atol=1e-5, err_msg=folder)
        np.testing.assert_allclose(st.encode(TEXTS), document, atol=1e-5, err_msg=folder)
        np.testing.assert_allclose(st.encode_query(TEXTS, truncate_dim=8), query[:, :8], atol=1e-5, err_msg=folder)
    router = json.loads(next((tmp_path / "exported").glob("*_Router/router_config.json")).read_text())
    assert set(router["types"].values()) == {"mrl_adaptor.MatryoshkaAdaptorModule"}  # the folder's own module file
    from mrl_hf.contract import inspect_checkpoint

    report = inspect_checkpoint(tmp_path / "exported")  # vLLM would skip the Router: said, with the fix
    assert any("skips ['Router']" in p.message for p in report.problems), report


def test_a_linear_asymmetric_adaptor_exports_as_dense_modules_without_remote_code(tiny_checkpoint, tmp_path):
    from sentence_transformers import SentenceTransformer

    from mrl_hf.export import export_sentence_transformers
    from mrl_hf.modeling import MRLBertModel

    model = attach_adaptor(MRLBertModel.from_pretrained(tiny_checkpoint[0]).eval(),
                           pca_rotation(DOCS, [8, 16, 32], queries=QUERIES))
    export_sentence_transformers(model, tmp_path / "exported")
    assert not (tmp_path / "exported" / "mrl_adaptor.py").exists()
    st = SentenceTransformer(str(tmp_path / "exported"), device="cpu")
    np.testing.assert_allclose(st.encode_query(TEXTS), model.encode_query(TEXTS, normalize=False), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(TEXTS), model.encode_document(TEXTS, normalize=False), atol=1e-5)


def test_training_through_an_asymmetric_adaptor_is_refused(asymmetric_model, tmp_path):
    from transformers import TrainingArguments

    from mrl_hf import MRLTrainer

    model = asymmetric_model
    batch = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="asymmetric"):
        model(**batch, positive_input_ids=batch["input_ids"], positive_attention_mask=batch["attention_mask"])
    with pytest.raises(ValueError, match="adaptor is asymmetric"):
        MRLTrainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))


def test_evaluation_embeds_queries_as_queries(asymmetric_model):
    """``recipes.evaluate`` and the mteb encoder pick the query side for queries (so their scores are the model's)."""
    from mrl_hf.evaluation.pairs import pair_retrieval_metrics
    from mrl_hf.recipes import evaluate

    model = asymmetric_model
    pairs = [(TEXTS[0], TEXTS[2]), (TEXTS[1], "a cat on a boat"), ("where is my order", "orders ship in a day")]
    queries, answers = [q for q, _ in pairs], [a for _, a in pairs]
    expected = pair_retrieval_metrics(model.encode_query(queries, truncate_dim=32, normalize=False),
                                      model.encode_document(answers, truncate_dim=32, normalize=False), [8, 32])
    assert evaluate(model, pairs, [8, 32]) == expected

    pytest.importorskip("mteb")
    from mteb.types import PromptType

    from mrl_hf.evaluation.mteb_eval import MRLMtebEncoder

    encoder = MRLMtebEncoder(model, 8)
    for prompt_type, method in ((PromptType.query, model.encode_query), (PromptType.document, model.encode_document),
                                (None, model.encode_document)):
        np.testing.assert_allclose(encoder.encode([{"text": TEXTS}], prompt_type=prompt_type),
                                   method(TEXTS, truncate_dim=8, normalize=True), atol=1e-6)


def test_refitting_keeps_the_query_mean_and_bad_queries_change_nothing():
    adaptor = pca_rotation(DOCS, [8, 32], queries=QUERIES)
    before = {k: v.clone() for k, v in adaptor.state_dict().items()}
    with pytest.raises(ValueError, match="queries has dim 16"):
        adaptor.init_pca(DOCS[:50], queries=QUERIES[:, :16])
    for name, value in adaptor.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)  # untouched by the bad call
    adaptor.init_pca(DOCS[:150])  # new documents, no queries: the query mean stays the queries'
    torch.testing.assert_close(adaptor.query_mean, before["query_mean"], rtol=0, atol=0)
    assert (adaptor.mean - before["mean"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="center=False"):
        adaptor.init_pca(DOCS, center=False)
    fitted = MatryoshkaAdaptor(32, [8, 32]).fit(DOCS, epochs=0, queries=QUERIES)  # epochs=0: the PCA start alone
    np.testing.assert_allclose(fitted.transform(QUERIES, task="query"),
                               pca_rotation(DOCS, [8, 32], queries=QUERIES).transform(QUERIES, task="query"),
                               atol=1e-5)


def test_an_adaptor_made_asymmetric_after_attaching_is_saved_as_it_is(tiny_checkpoint, tmp_path):
    """The saved config is rebuilt from the adaptor on save, so ``set_query_mean`` after ``attach_adaptor`` is kept
    (and the sentence-transformers files route ``task``)."""
    from sentence_transformers import SentenceTransformer

    from mrl_hf.modeling import MRLBertModel

    model = attach_adaptor(MRLBertModel.from_pretrained(tiny_checkpoint[0]).eval(), pca_rotation(DOCS, [8, 16, 32]))
    model.adaptor.set_query_mean(QUERIES)
    query = model.encode_query(TEXTS)
    model.save_pretrained(tmp_path / "saved")
    loaded = MRLBertModel.from_pretrained(tmp_path / "saved")
    assert loaded.adaptor.asymmetric and loaded.config.adaptor["asymmetric"] is True
    np.testing.assert_array_equal(loaded.encode_query(TEXTS), query)
    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(st.encode_query(TEXTS), model.encode_query(TEXTS, normalize=False), atol=1e-5)


def test_the_model_card_embeds_its_sample_query_as_a_query(asymmetric_model, tmp_path):
    """The card's mrl_hf and transformers snippets, run as written, give ``encode_query``'s vectors."""
    from mrl_hf.hub import save_for_hub, usage_snippets

    model = asymmetric_model
    save_for_hub(model, tmp_path / "model", remote_code=False)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "model.encode_query(" in card and 'normalize=True, task="query")' in card
    snippets = usage_snippets("MRLBertModel", str(tmp_path / "model"), 16, remote_code=False, asymmetric=True)
    expected = model.encode_query(["How do I reset my password?"], truncate_dim=16, normalize=True)
    namespace = {}
    exec(snippets["mrl_hf_snippet"], namespace)  # noqa: S102  (our own rendered code)
    np.testing.assert_allclose(namespace["queries"], expected, atol=1e-5)
    exec(snippets["transformers_snippet"], namespace)  # noqa: S102
    np.testing.assert_allclose(namespace["out"].truncated_embeddings.detach().numpy(), expected, atol=1e-5)


def test_the_supervised_term_embeds_the_pairs_queries_as_queries():
    """With ``pairs`` and ``queries``, the pair queries go through the query side, their positives the documents'."""
    seen = []

    class Recording(MatryoshkaAdaptor):
        def forward(self, embeddings, task=None):
            seen.append((embeddings.shape[0], task))
            return super().forward(embeddings, task)

    pair_q, pair_p = QUERIES[:40], DOCS[:40]
    Recording(32, [8, 32], hidden_dim=8).fit(DOCS, epochs=1, batch_size=100, queries=QUERIES, pairs=(pair_q, pair_p))
    assert ("query" in {task for _, task in seen}) and seen.count((40, "query")) == seen.count((40, None)) == 3


def test_a_new_asymmetric_adaptor_fitted_without_queries_is_refused():
    """MatryoshkaAdaptor(asymmetric=True) starts with a zero query mean: fitted on documents alone, queries would not
    be centred while documents are. Refused, naming queries= and set_query_mean; either one makes it work."""
    rng = np.random.default_rng(0)
    documents, queries = rng.normal(size=(60, 16)), rng.normal(size=(30, 16)) + 1.0
    with pytest.raises(ValueError, match=r"asymmetric but has no query mean yet.*set_query_mean"):
        MatryoshkaAdaptor(16, [4, 16], asymmetric=True).fit(documents, epochs=1)
    fitted = MatryoshkaAdaptor(16, [4, 16], asymmetric=True).fit(documents, queries=queries, epochs=1)
    assert fitted.query_mean.abs().sum() > 0
    preset = MatryoshkaAdaptor(16, [4, 16], asymmetric=True)
    preset.set_query_mean(queries)
    preset.fit(documents, epochs=1)  # keeps the query mean it was given
    torch.testing.assert_close(preset.query_mean, fitted.query_mean)
