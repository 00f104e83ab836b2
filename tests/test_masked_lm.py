"""MRLModelForMaskedLM: masked LM with an MRL-E decoder tied to the word embeddings on any masked-LM family.

Every family is a tiny random config; its plain ``...ForMaskedLM`` is saved by transformers and loaded back through
the Matryoshka class, which must then compute what the family computes at full size and ``t[:m] @ E[:, :m].T + b`` at
every smaller size, with the decoder still the word-embedding matrix.
"""
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    TrainingArguments,
    default_data_collator,
)

from mrl_hf import MRLTrainer
from mrl_hf.modeling import (
    MRLBertConfig,
    MRLBertForMaskedLM,
    MRLBertModel,
    MRLMaskedLMConfig,
    MRLModelForMaskedLM,
    masked_lm_accuracy,
)

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64)
FAMILIES = {
    "bert": TINY,
    "roberta": TINY,
    "xlm-roberta": TINY,
    "modernbert": {**TINY, "global_attn_every_n_layers": 1, "local_attention": 16, "pad_token_id": 0,
                   "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2},
    "mpnet": TINY,
    "deberta-v2": TINY,
    "distilbert": dict(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64),
    "electra": {**TINY, "embedding_size": 8},  # a factorised embedding: the decoder nests its 8 features
}
NESTING = {family: ([2, 4, 8] if family == "electra" else [4, 8, 16]) for family in FAMILIES}


def plain_config(family, **overrides):
    return AutoConfig.for_model(family, **{**FAMILIES[family], **overrides})


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, [2, 5]] = ids[:, [2, 5]]
    ids[:, [2, 5]] = 4
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def plain_folder(request, tmp_path_factory):
    torch.manual_seed(0)
    plain = AutoModelForMaskedLM.from_config(plain_config(request.param)).eval()
    folder = tmp_path_factory.mktemp(request.param)
    plain.save_pretrained(folder)
    return request.param, plain, folder


def test_plain_checkpoint_loads_whole_and_nests_the_tied_decoder(plain_folder, tmp_path):
    family, plain, folder = plain_folder
    model, info = MRLModelForMaskedLM.from_pretrained(folder, nesting_list=NESTING[family], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.eval()
    x = batch()
    decoder = model.get_output_embeddings()
    assert decoder.weight is model.get_input_embeddings().weight  # MRL-E: the decoder is E
    with torch.no_grad():
        full = model(x["input_ids"], attention_mask=x["attention_mask"]).logits
        torch.testing.assert_close(full, plain(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits,
                                   rtol=0, atol=1e-6)
        t = model.decoder_features(x["input_ids"], attention_mask=x["attention_mask"])
        for m in (1, NESTING[family][0], NESTING[family][1]):
            by_hand = t[..., :m] @ decoder.weight[:, :m].T + (decoder.bias if decoder.bias is not None else 0)
            torch.testing.assert_close(model(x["input_ids"], attention_mask=x["attention_mask"], truncate_dim=m).logits,
                                       by_hand, rtol=0, atol=1e-5)
        out = model(**x)
    assert out.per_dim_losses.shape == (3,) and torch.isfinite(out.per_dim_losses).all()
    assert out.loss == pytest.approx(out.per_dim_losses.sum().item(), rel=1e-6)
    # eval mode with labels: per-size predictions at the masked positions only, for the Trainer's metrics
    assert out.nested_predictions.shape == (3, 9, 3)
    assert ((out.nested_predictions != -100) == (x["labels"] != -100).unsqueeze(-1)).all()

    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "saved").eval()
    assert type(again) is MRLModelForMaskedLM and again.config.nesting_list == NESTING[family]
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(again(**x).per_dim_losses, out.per_dim_losses)


@pytest.mark.parametrize("family", ["roberta", "modernbert", "bert", "deberta-v2"])  # bert, deberta-v2: bias on meta
def test_bare_base_model_gets_a_new_initialised_head(family, tmp_path):
    torch.manual_seed(0)
    base = AutoModel.from_config(plain_config(family))
    base.save_pretrained(tmp_path)
    model, info = MRLModelForMaskedLM.from_pretrained(tmp_path, nesting_list=NESTING[family], output_loading_info=True)
    assert not info["unexpected_keys"]  # RoBERTa's pooler is not in a masked LM, and not reported
    encoder_prefix = f"mlm.{model.mlm.base_model_prefix}."
    assert info["missing_keys"] and not [k for k in info["missing_keys"] if k.startswith(encoder_prefix)]
    encoder = model.mlm.base_model.state_dict()
    for name, value in base.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(encoder[name], value), name
    assert all(torch.isfinite(p).all() for p in model.parameters())
    decoder = model.get_output_embeddings()  # ModernBERT's decoder bias is its own (not tied): new, so zero
    assert torch.equal(decoder.bias, torch.zeros_like(decoder.bias))
    assert decoder.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.isfinite(model(**batch()).loss)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_new_model_starts_with_a_zero_decoder_bias(family):
    """The families' own masked LMs start their decoder bias at zero; on BERT and DeBERTa-v2 the MRL-E head's uniform
    init overwrote it (0.25 at most)."""
    torch.manual_seed(0)
    model = MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=plain_config(family), nesting_list=NESTING[family]))
    bias = model.get_output_embeddings().bias
    assert bias is None or torch.equal(bias, torch.zeros_like(bias))
    embeddings = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is embeddings


def test_a_plain_checkpoint_keeps_its_own_decoder_bias(tmp_path):
    torch.manual_seed(0)
    plain = AutoModelForMaskedLM.from_config(plain_config("modernbert"))
    with torch.no_grad():
        plain.decoder.bias.normal_()
    plain.save_pretrained(tmp_path)
    model = MRLModelForMaskedLM.from_pretrained(tmp_path, nesting_list=NESTING["modernbert"])
    assert torch.equal(model.get_output_embeddings().bias, plain.decoder.bias)


def test_same_losses_as_the_bert_class():
    """Over BERT, the generic class computes exactly what MRLBertForMaskedLM computes with the same weights."""
    torch.manual_seed(0)
    bert = MRLBertForMaskedLM(MRLBertConfig(**TINY, nesting_list=[4, 8, 16], relative_importance=[1, 2, 1])).eval()
    generic = MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=plain_config("bert"), nesting_list=[4, 8, 16],
                                                    relative_importance=[1, 2, 1])).eval()
    missing, unexpected = generic.mlm.load_state_dict(bert.state_dict(), strict=False)
    assert not missing and not unexpected
    x = batch(1)
    with torch.no_grad():
        a, b = bert(**x, smoothing=0.1, return_logits=True), generic(**x, smoothing=0.1, return_logits=True)
    for field in ("loss", "per_dim_losses", "logits", "nested_predictions"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=0, atol=1e-6, msg=field)
    assert masked_lm_accuracy(generic, [x], [4, 16]) == masked_lm_accuracy(bert, [x], [4, 16])


def test_masked_lm_accuracy_reads_sentence_pairs_as_the_model_does():
    """token_type_ids were dropped: a pair's second segment was scored as the first, and the accuracy was not that of
    the model's own predictions (here: 100% at full size by construction)."""
    torch.manual_seed(0)
    for model in (MRLBertForMaskedLM(MRLBertConfig(**TINY, nesting_list=[4, 8, 16])).eval(),
                  MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=plain_config("bert"),
                                                        nesting_list=[4, 8, 16])).eval()):
        with torch.no_grad():  # the segment embeddings made to matter
            for name, weight in model.named_parameters():
                if "token_type_embeddings" in name:
                    weight.mul_(50)
        x = batch(2)
        x["token_type_ids"] = torch.zeros_like(x["input_ids"])
        x["token_type_ids"][:, 4:] = 1
        with torch.no_grad():
            predicted = model(**{k: v for k, v in x.items() if k != "labels"}, return_logits=True).logits.argmax(-1)
        x["labels"] = torch.where(x["labels"] != -100, predicted, -100)
        assert masked_lm_accuracy(model, [x], [16])[16] == 100.0, type(model).__name__


def test_mrl_trainer_trains_every_size_and_keeps_the_decoder_tied(tmp_path):
    torch.manual_seed(0)
    model = MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=plain_config("xlm-roberta"), nesting_list=[4, 8, 16]))
    rows = [{k: v[i] for k, v in batch(seed).items()} for seed in range(6) for i in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(tmp_path, per_device_train_batch_size=6, num_train_epochs=2, learning_rate=1e-2,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = MRLTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:6],
                         data_collator=default_data_collator)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 6 and all(f"loss_dim_{m}" in logs[0] for m in (4, 8, 16))
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "mlm.roberta.embeddings.word_embeddings.weight" in changed and "mlm.lm_head.dense.weight" in changed
    metrics = trainer.evaluate()
    assert all(f"eval_loss_dim_{m}" in metrics for m in (4, 8, 16))


def test_bad_settings_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="tie_word_embeddings=True"):
        MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=plain_config("roberta", tie_word_embeddings=False)))
    esm = AutoConfig.for_model("esm", vocab_size=33, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=40, pad_token_id=1, mask_token_id=32)
    with pytest.raises(ValueError, match=r"'esm' masked LM head adds a bias of its own after the decoder"):
        MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=esm, nesting_list=[4, 8, 16]))  # used to fail in forward
    with pytest.raises(ValueError, match="efficient=False"):
        MRLMaskedLMConfig(backbone_config=plain_config("roberta"), efficient=False)
    with pytest.raises(ValueError, match="precisions"):
        MRLMaskedLMConfig(backbone_config=plain_config("roberta"), precisions=["binary"])
    with pytest.raises(ValueError, match="nesting_list"):
        MRLMaskedLMConfig(backbone_config=plain_config("roberta"), nesting_list=[8, 32])
    model = MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=plain_config("roberta"), nesting_list=[4, 16]))
    with pytest.raises(ValueError, match="truncate_dim"):
        model(**batch(), truncate_dim=17)
    with pytest.raises(ValueError, match="truncate_dim=17"):  # the BERT class named it dim, after the encoder ran
        MRLBertForMaskedLM(MRLBertConfig(**TINY, nesting_list=[4, 16]))(**batch(), truncate_dim=17)
    MRLBertForMaskedLM(MRLBertConfig(**TINY, nesting_list=[4, 16])).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="AutoModelForMaskedLM.from_pretrained"):
        MRLModelForMaskedLM.from_pretrained(tmp_path / "bert")
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path / "bert")) is MRLBertForMaskedLM
    # a quantisation-aware embedding model's folder: its codes are not what a masked LM trains
    MRLBertModel(MRLBertConfig(**TINY, nesting_list=[4, 16], precisions={"binary": [4]})).save_pretrained(
        tmp_path / "qat")
    with pytest.raises(ValueError, match=r"precisions=\{'binary': \[4\]\}: .*from_pretrained\(\.\.\., "
                                         r"precisions=None\)"):
        MRLBertForMaskedLM.from_pretrained(tmp_path / "qat")
    assert MRLBertForMaskedLM.from_pretrained(tmp_path / "qat", precisions=None).config.matryoshka_precisions == {
        "float32": [4, 16]}
    with pytest.raises(ValueError, match=r"another nesting_list: pass precisions=None"):
        MRLBertModel.from_pretrained(tmp_path / "qat", nesting_list=[16])
