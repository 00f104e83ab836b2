"""Real data: `mrl-hf matryoshkafy --corpus` on the texts a user will search, without labels.

Protocol (examples/matryoshkafy.py --in-domain): chatterbot's answers are split in random halves; one half, with the
questions that point only into it, is the unlabelled corpus given to the command (751 texts); the other half with its
own questions is the held-out retrieval set (370 questions over 452 answers), never seen. The saved model (MiniLM
with the adaptor attached) is scored by hit@10 at each size against PCA fitted on the same corpus and the original.
The command holds 10% of the corpus out for its own label-free report, then fits the saved adaptor again on all 751
texts. Measured (seed 0, 2026-12-06, 2 threads): hit@10 at 16 / 32 / 64 / 128 / 384 dims: adaptor 55.1 / 65.1 / 71.1 /
76.5 / 77.0, PCA fitted on the corpus 48.6 / 61.6 / 68.6 / 74.3 / 76.8, original 39.2 / 52.2 / 61.6 / 71.6 / 77.8.
"""
import importlib.util
import pathlib

import pytest

from mrl_hf.cli import main

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "matryoshkafy.py"
DIMS = [16, 32, 64, 128, 256, 384]


def _example():
    spec = importlib.util.spec_from_file_location("matryoshkafy_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_adaptor_fitted_on_the_corpus_leads_pca_on_held_out_retrieval(tmp_path, capsys):
    from mrl_hf.adaptor import pca_rotation
    from mrl_hf.evaluation.pairs import pair_retrieval_metrics
    from mrl_hf.modeling import MRLBertModel
    from mrl_hf.recipes import packaged_minilm

    recipe = _example()
    corpus, held_out = recipe.split_halves(recipe.chatterbot_qa())
    (tmp_path / "corpus.txt").write_text("\n".join(t.replace("\n", " ") for t in corpus) + "\n")
    status = main(["matryoshkafy", "--corpus", str(tmp_path / "corpus.txt"), "--output-dir", str(tmp_path / "out"),
                   "--nesting-list", ",".join(map(str, DIMS))])
    printed = capsys.readouterr().out
    assert status == 0 and "overlap@10" in printed and "adaptor fitted on the corpus" in printed

    adapted = MRLBertModel.from_pretrained(tmp_path / "out")
    original = MRLBertModel.from_pretrained(packaged_minilm())
    assert adapted.adaptor is not None and adapted.config.nesting_list == DIMS

    def hit10(model, transform=lambda x: x):
        q = transform(model.encode(held_out.queries, truncate_dim=384, normalize=False))
        c = transform(model.encode(held_out.corpus, truncate_dim=384, normalize=False))
        metrics = pair_retrieval_metrics(q, c, DIMS, held_out.relevant)
        return {m: 100 * metrics[m]["hit@10"] for m in DIMS}

    pca = pca_rotation(original.encode(list(dict.fromkeys(corpus)), truncate_dim=384, normalize=False), DIMS)
    ours, baseline, plain = hit10(adapted), hit10(original, pca.transform), hit10(original)
    print(f"hit@10 adaptor {ours}\nPCA {baseline}\noriginal {plain}")
    assert ours[16] > baseline[16] + 4 and ours[32] > baseline[32] + 1, (ours, baseline)  # measured +6.5 / +3.5
    # the targets are >= 90% of the full-size original at 64 dims and >= 97% at 128, measured 91.3% / 98.3%
    # (3 / 3 questions above them, 0.27 points each); this guards 89% / 96%, 3 questions under the targets, so that
    # a change of thread count in the adaptor's fit cannot turn CI red while a real regression still does
    assert ours[64] >= 0.89 * plain[384] and ours[128] >= 0.96 * plain[384], (ours, plain)
    assert ours[384] > plain[384] - 1.5, (ours, plain)  # the full size stays as good as the original


@pytest.mark.slow
def test_with_queries_of_their_own_the_adaptor_meets_the_targets_on_rotten_tomatoes(tmp_path, capsys):
    """Rotten-tomatoes review -> plot: the training half's 518 plots are the corpus and its 2,269 reviews the
    unlabelled queries (`--queries`, no pairs); the held-out half is 2,000 reviews over 565 plots. Reviews and plots
    are different kinds of text: the symmetric adaptor reached 83% of the original's full-size hit@10 at 64 dims
    here; the asymmetric one (fitted on the plots, reviews centred on their own mean) measured 20.6 / 23.5 at 64 / 128
    dims against the original's 22.1 at full size (20.65 / 23.45 / 22.15: 93.2% / 106%), both read at the 256 tokens
    all-MiniLM-L6-v2's sentence_bert_config.json states (at 512 tokens: 20.65 / 23.65 / 22.70, 91.0% / 104%; seed-1
    split, scratch run: about 91% / 102%)."""
    from mrl_hf.evaluation.pairs import pair_retrieval_metrics
    from mrl_hf.modeling import MRLBertModel
    from mrl_hf.recipes import packaged_minilm

    recipe = _example()
    full_set = recipe.rotten_tomatoes_review_to_plot(max_queries=None)
    text, held_out = recipe.split_halves(full_set, max_queries=2000)
    reviews = set(full_set.queries)
    for name, rows in (("plots.txt", [t for t in text if t not in reviews]),
                       ("reviews.txt", [t for t in text if t in reviews])):
        (tmp_path / name).write_text("\n".join(t.replace("\n", " ") for t in rows) + "\n")
    status = main(["matryoshkafy", "--corpus", str(tmp_path / "plots.txt"), "--queries", str(tmp_path / "reviews.txt"),
                   "--output-dir", str(tmp_path / "out"), "--nesting-list", ",".join(map(str, DIMS))])
    assert status == 0 and "encode_query" in capsys.readouterr().out

    adaptor = MRLBertModel.from_pretrained(tmp_path / "out").adaptor
    assert adaptor.asymmetric
    original = MRLBertModel.from_pretrained(packaged_minilm())
    # the saved model is the original encoder + this adaptor (tests/test_adaptor_asymmetric.py): encode once
    q = original.encode(held_out.queries, truncate_dim=384, normalize=False)
    c = original.encode(held_out.corpus, truncate_dim=384, normalize=False)

    def hit10(queries, corpus):
        metrics = pair_retrieval_metrics(queries, corpus, DIMS, held_out.relevant)
        return {m: 100 * metrics[m]["hit@10"] for m in DIMS}

    ours = hit10(adaptor.transform(q, task="query", normalize=False), adaptor.transform(c, normalize=False))
    plain = hit10(q, c)
    print(f"hit@10 asymmetric adaptor {ours}\noriginal {plain}")
    # targets >= 90% at 64 dims and >= 97% at 128; measured 93.2% (14 reviews above it, 0.05 points each) and 106%:
    # this guards 91% so that a thread-count change in the fit cannot turn CI red while a real regression does
    assert ours[64] >= 0.91 * plain[384] and ours[128] >= 0.97 * plain[384], (ours, plain)
    assert ours[64] > plain[64] + 3 and ours[384] > plain[384], (ours, plain)  # measured +5.3 and +3.7
