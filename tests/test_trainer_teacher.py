"""MRLTrainer(teacher_weight=w): the nested InfoNCE plus w times similarity distillation to a frozen teacher (by
default the model as it was when the trainer was built), so fine-tuning keeps what the model knew."""
import pytest
import torch
from transformers import TrainingArguments, default_data_collator

from mrl_hf import MRLTrainer
from mrl_hf.distillation import MatryoshkaDistillationLoss, MatryoshkaDistillationTrainer
from mrl_hf.modeling import MRLBertConfig, MRLBertModel, MRLModelForSequenceClassification, MRLTextClassificationConfig

TINY = dict(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
NESTING = [4, 8, 16]


def tiny(seed=0):
    torch.manual_seed(seed)
    return MRLBertModel(MRLBertConfig(**TINY, nesting_list=NESTING))


def rows(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(5, 60, (6,), generator=g),
             "positive_input_ids": torch.randint(5, 60, (6,), generator=g)} for _ in range(n)]


def trainer(model, data, tmp_path, **kwargs):
    args = TrainingArguments(tmp_path, per_device_train_batch_size=8, max_steps=4, learning_rate=0.05, optim="sgd",
                             lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True, train_sampling_strategy="sequential",
                             remove_unused_columns=False)
    return MRLTrainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator, **kwargs)


def test_the_logged_loss_is_infonce_plus_the_weighted_teacher_term(tmp_path):
    data = rows()
    model = tiny()
    t = trainer(model, data, tmp_path, teacher_weight=0.5, teacher_sizes="all")
    first = default_data_collator(data[:8])
    with torch.no_grad():  # what step 1 computes, by hand, from the model before any update
        out = model(**first)
        anchors = model(first["input_ids"]).embeddings
        teacher = MatryoshkaDistillationLoss(NESTING)(anchors, anchors)  # the teacher is the model as it was
    t.train()
    log = next(h for h in t.state.log_history if "loss" in h)
    expected = out.per_dim_losses + 0.5 * teacher.per_dim_losses
    assert [log[f"loss_dim_{m}"] for m in NESTING] == pytest.approx(expected.tolist(), rel=1e-5)
    assert log["loss"] == pytest.approx(float(out.loss + 0.5 * teacher.loss), rel=1e-5)
    assert all(not p.requires_grad for p in t.teacher.parameters())
    assert t.teacher is not model and not torch.equal(t.teacher.bert.embeddings.word_embeddings.weight,
                                                      model.bert.embeddings.word_embeddings.weight)  # model trained


def test_the_full_size_teacher_term_is_logged_at_the_full_size(tmp_path):
    data = rows()
    model = tiny()
    first = default_data_collator(data[:8])
    with torch.no_grad():
        out = model(**first)
        anchors = model(first["input_ids"]).embeddings
        teacher = MatryoshkaDistillationLoss(NESTING)(anchors, anchors).per_dim_losses[-1]
    t = trainer(model, data, tmp_path, teacher_weight=2.0)  # teacher_sizes="full" by default
    t.train()
    log = next(h for h in t.state.log_history if "loss" in h)
    expected = out.per_dim_losses.clone()
    expected[-1] += 2.0 * teacher
    assert [log[f"loss_dim_{m}"] for m in NESTING] == pytest.approx(expected.tolist(), rel=1e-5)
    assert log["loss"] == pytest.approx(float(expected.sum()), rel=1e-5)


def test_the_teacher_keeps_the_embeddings_close_to_the_original(tmp_path):
    """The no-forgetting property in miniature: after the same steps, the anchors' similarity structure moved less
    from the original's with the teacher term than without it."""
    data = rows(64)
    probe = default_data_collator(rows(16, seed=7))["input_ids"]

    def drift(weight):
        original = tiny()
        with torch.no_grad():
            before = torch.nn.functional.normalize(original(probe).embeddings, dim=-1)
        model = tiny()
        trainer(model, data, tmp_path / str(weight), teacher_weight=weight, teacher_sizes="all").train()
        with torch.no_grad():
            after = torch.nn.functional.normalize(model.eval()(probe).embeddings, dim=-1)
        return (after @ after.T - before @ before.T).abs().mean().item()

    without, with_teacher = drift(0.0), drift(5.0)
    assert with_teacher < 0.5 * without, (with_teacher, without)


def test_teacher_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher_weight=-1"):
        trainer(tiny(), rows(), tmp_path, teacher_weight=-1)
    with pytest.raises(ValueError, match="teacher_sizes='some'"):
        trainer(tiny(), rows(), tmp_path, teacher_weight=1.0, teacher_sizes="some")
    with pytest.raises(ValueError, match="teacher='student'"):
        trainer(tiny(), rows(), tmp_path, teacher_weight=1.0, teacher="student")
    # the full size weighted 0: its log share was divided by 0 (a false non-finite loss, or every batch skipped)
    unweighted = MRLBertModel(MRLBertConfig(**TINY, nesting_list=NESTING, relative_importance=[1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="relative_importance is 0.0; give the full size a weight > 0"):
        trainer(unweighted, rows(), tmp_path, teacher_weight=1.0)
    trainer(unweighted, rows(), tmp_path, teacher_weight=1.0, teacher_sizes="all").train()
    torch.manual_seed(0)
    classifier = MRLModelForSequenceClassification(MRLTextClassificationConfig(
        backbone_config=MRLBertConfig(**TINY).to_dict() | {"model_type": "bert"}, nesting_list=NESTING, num_labels=3))
    with pytest.raises(ValueError, match="not a text embedding model"):
        trainer(classifier, rows(), tmp_path, teacher_weight=1.0)
    args = TrainingArguments(tmp_path, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="distils already"):
        MatryoshkaDistillationTrainer(model=tiny(), args=args, train_dataset=rows(), teacher_weight=1.0)


def test_the_teacher_runs_once_per_distinct_anchor(tmp_path):
    """Two epochs over 16 anchors, 4 of them repeated: the teacher embeds 12 rows in all (the first epoch's distinct
    anchors), and training equals a run that recomputes the teacher for every batch."""
    base = rows(12)
    data = base + base[:4]

    def run(out, cache=True):
        model = tiny()
        t = trainer(model, data, out, teacher_weight=1.0, teacher_sizes="all")
        t.args.max_steps, t.args.num_train_epochs = -1, 2
        seen = []
        t.teacher.register_forward_hook(lambda module, args, kwargs, out: seen.append(len(kwargs["input_ids"])),
                                        with_kwargs=True)
        if not cache:  # the reference: forget every teacher vector before each batch
            original = t._teacher_embeddings

            def recompute(inputs, device):
                t._teacher_cache.clear()
                return original(inputs, device)
            t._teacher_embeddings = recompute
        t.train()
        return t, seen

    cached, seen = run(tmp_path / "cached")
    assert sum(seen) == 12 and seen[0] == 8  # batch 1: 8 new anchors; batch 2: 4 new (the rest repeat)
    fresh, seen_fresh = run(tmp_path / "fresh", cache=False)
    assert sum(seen_fresh) == 4 * 8  # 2 epochs x 2 batches of 8
    for p, q in zip(cached.model.parameters(), fresh.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_last_batch_of_one_anchor_trains_without_the_teacher_term(tmp_path):
    """9 pairs in batches of 8: the second step has one anchor and no similarities to keep. It used to fail at the
    end of the epoch; now the teacher term adds nothing there, and the InfoNCE of one pair is 0."""
    t = trainer(tiny(), rows(9), tmp_path, teacher_weight=0.5)
    t.args.max_steps = 2
    t.train()
    logs = [h for h in t.state.log_history if "loss" in h]
    assert len(logs) == 2 and logs[0]["loss"] > 0
    assert logs[1]["loss"] == 0 and all(logs[1][f"loss_dim_{m}"] == 0 for m in NESTING)
