"""MRLTrainer(mini_batch_size=k): the cached (GradCache) nested contrastive loss trains exactly like the uncached one
(parameters and logged losses compared after several steps) while the encoder never sees more than k rows with
autograd on. Two processes, resumption and the plain-torch reference: the "embed_cached" kind of the training matrix
(tests/training_matrix.py)."""
import pytest
import torch
from test_trainer_teacher import NESTING, TINY, rows
from transformers import TrainingArguments, default_data_collator

from mrl_hf import MRLTrainer
from mrl_hf.modeling import (
    MRLBertConfig,
    MRLBertModel,
    MRLModelForTextEmbedding,
    MRLModelForSequenceClassification,
    MRLTextClassificationConfig,
    MRLTextEmbeddingConfig,
)

STEPS = 4


def model_with(dropout=0.0, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    config = MRLBertConfig(**{**TINY, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout},
                           nesting_list=NESTING)
    return MRLBertModel(config).to(dtype)


def with_negatives(data, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [{**row, "negative_input_ids": torch.randint(5, 60, (6,), generator=g)} for row in data]


def train(model, data, tmp_path, batch=8, accumulation=1, **kwargs):
    settings = {k: kwargs.pop(k) for k in ("bf16", "activation_checkpointing") if k in kwargs}
    args = TrainingArguments(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                             max_steps=STEPS, learning_rate=0.05, optim="sgd", lr_scheduler_type="constant",
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             train_sampling_strategy="sequential", remove_unused_columns=False, seed=0, **settings)
    trainer = MRLTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator, **kwargs)
    trainer.train()
    return trainer


def logs(trainer):
    return [v for h in trainer.state.log_history if "loss" in h
            for v in (h["loss"], h["grad_norm"], *[h[f"loss_dim_{m}"] for m in NESTING])]


def assert_same_training(a, b, rtol=1e-9):
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=rtol, msg=name)
    assert logs(a) == pytest.approx(logs(b), rel=rtol)


@pytest.mark.parametrize("mini_batch_size", [1, 3, 8])
def test_cached_loss_trains_like_the_uncached_loss(tmp_path, mini_batch_size):
    data = rows()
    reference = train(model_with(), data, tmp_path / "ref")
    cached = train(model_with(), data, tmp_path / "cached", mini_batch_size=mini_batch_size)
    assert_same_training(cached, reference)
    start = next(iter(model_with().parameters()))
    assert not torch.equal(next(iter(cached.model.parameters())), start)  # it did train


def test_cached_loss_with_negatives_teacher_and_accumulation(tmp_path):
    data = with_negatives(rows())
    kwargs = dict(batch=4, accumulation=2, teacher_weight=0.5)
    reference = train(model_with(), data, tmp_path / "ref", **kwargs)
    cached = train(model_with(), data, tmp_path / "cached", mini_batch_size=3, **kwargs)
    assert_same_training(cached, reference)


def test_dropout_masks_are_replayed(tmp_path):
    data = rows()
    # one mini-batch per part draws dropout in the uncached order, so training is identical
    reference = train(model_with(dropout=0.3), data, tmp_path / "ref")
    whole = train(model_with(dropout=0.3), data, tmp_path / "whole", mini_batch_size=8)
    assert_same_training(whole, reference)
    # smaller mini-batches draw other masks; the gradient must be the gradient of the loss that was logged. With
    # replayed masks, one step from the same start equals a step of the uncached loss on the same masks: check that a
    # second run is identical (replay is deterministic) and that training moves the loss like the reference does.
    split = train(model_with(dropout=0.3), data, tmp_path / "split", mini_batch_size=3)
    again = train(model_with(dropout=0.3), data, tmp_path / "again", mini_batch_size=3)
    assert_same_training(split, again)
    assert logs(split)[-5] == pytest.approx(logs(reference)[-5], rel=0.2)  # the last logged loss


def test_gradient_is_the_gradient_of_the_cached_loss_with_dropout():
    """One backward of the cached loss (dropout on, 3 mini-batches) against autograd through a model whose dropout
    masks are the replayed ones: run the uncached loss on the same mini-batches with the same random states."""
    from mrl_hf.cached_loss import cached_pair_loss
    from mrl_hf.modeling.text_common import pair_contrastive_loss

    model = model_with(dropout=0.3).train()
    batch = default_data_collator(rows(8))
    torch.manual_seed(7)
    loss, _ = cached_pair_loss(model, model.config, batch, 3)
    loss.backward()
    cached = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    torch.manual_seed(7)  # the same draws, in the same order, with autograd on
    parts = []
    for ids in (batch["input_ids"], batch["positive_input_ids"]):
        parts.append(torch.cat([model(input_ids=ids[s:s + 3], return_loss=False).embeddings for s in range(0, 8, 3)]))
    expected, _ = pair_contrastive_loss(model.config, parts[0], parts[1:])
    expected.backward()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    for name_grad, (p_name, p) in zip(cached, model.named_parameters()):
        torch.testing.assert_close(name_grad, p.grad, rtol=1e-9, atol=1e-12, msg=p_name)


def test_the_encoder_never_sees_more_than_mini_batch_rows_with_autograd(tmp_path):
    model = model_with()
    seen = []
    model.bert.encoder.register_forward_hook(
        lambda module, args, out: seen.append((args[0].shape[0], torch.is_grad_enabled())))
    train(model, rows(), tmp_path, mini_batch_size=3)
    with_grad = [n for n, grad in seen if grad]
    assert with_grad and max(with_grad) == 3
    assert sum(with_grad) == sum(n for n, grad in seen if not grad) == STEPS * 2 * 8  # each row: once without, once with


def test_generic_text_model_trains_the_same_cached(tmp_path):
    from transformers import XLMRobertaConfig

    def make():
        torch.manual_seed(0)
        backbone = XLMRobertaConfig(**{**TINY, "max_position_embeddings": 20})
        config = MRLTextEmbeddingConfig(backbone_config=backbone.to_dict(), nesting_list=NESTING)
        return MRLModelForTextEmbedding(config).to(torch.float64)

    data = rows()
    assert_same_training(train(make(), data, tmp_path / "cached", mini_batch_size=5),
                         train(make(), data, tmp_path / "ref"))


def test_bad_mini_batch_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"mini_batch_size=0 must be a whole number >= 1"):
        train(model_with(), rows(), tmp_path, mini_batch_size=0)
    classifier = MRLModelForSequenceClassification(MRLTextClassificationConfig(
        backbone_config=MRLBertConfig(**TINY).to_dict() | {"model_type": "bert"}, nesting_list=NESTING, num_labels=2))
    with pytest.raises(ValueError, match=r"MRLModelForSequenceClassification is not a text embedding model"):
        train(classifier, rows(), tmp_path, mini_batch_size=4)
    deduplicating = model_with()
    deduplicating.config.embed_duplicates_once = True  # the cached loss embeds every row: refused, not ignored
    with pytest.raises(ValueError, match=r"embed_duplicates_once=True: the cached loss embeds every row"):
        train(deduplicating, rows(), tmp_path, mini_batch_size=4)
    anchors_only = [{"input_ids": row["input_ids"]} for row in rows()]  # failed inside torch.cat
    with pytest.raises(ValueError, match=r"needs \(anchor, positive\) pairs, but the batch has no positive_input_ids"):
        train(model_with(), anchors_only, tmp_path, mini_batch_size=4)


@pytest.mark.parametrize("setting,tol", [("bf16", 1e-4), ("activation_checkpointing", 1e-5)])
def test_cached_loss_under_bf16_and_activation_checkpointing(tmp_path, setting, tol):
    """bf16 autocast (accelerate wraps the model's forward, so the replayed forward runs in it too) and activation
    checkpointing: float32 model, equal to the uncached run within bf16 / float32 rounding."""
    data = rows()
    args = {setting: True}
    reference = train(model_with(dtype=torch.float32), data, tmp_path / "ref", **args)
    cached = train(model_with(dtype=torch.float32), data, tmp_path / "cached", mini_batch_size=3, **args)
    assert_same_training(cached, reference, rtol=tol)


def test_two_processes_with_unequal_last_batches_train_like_the_uncached_loss(tmp_path):
    """Every mini-batch's backward all-reduced the gradients under DDP, so a process with more rows made more
    collective calls than the other and the run hung at the last step; now it syncs once, at the last mini-batch.
    Evaluating with unequal batches, the per-size losses are gathered padded to one shape."""
    import training_matrix as tm

    tm.run_two_processes("cached_uneven_ddp.py", str(tmp_path), port_base=27500, timeout=240)
    runs = torch.load(tmp_path / "runs.pt")
    assert runs["plain"]["steps"] == runs["cached"]["steps"] == 4
    for name, value in runs["plain"]["params"].items():
        torch.testing.assert_close(runs["cached"]["params"][name], value, rtol=1e-9, atol=1e-9, msg=name)
    assert [log["loss"] for log in runs["cached"]["logs"]] == pytest.approx(
        [log["loss"] for log in runs["plain"]["logs"]], rel=1e-9)
    for evaluation in runs["evaluations"]:  # unequal eval batches too: the per-size gather crashed on the shapes
        assert evaluation["loss"] == pytest.approx(sum(evaluation["dims"]), rel=1e-6)
