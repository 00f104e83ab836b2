"""The output rotation (mrl_hf.rotation): MRLTrainer(rotation_learning_rate=...) trains it as a reference loop does
(SGD at its own rate, then the nearest orthogonal matrix), the full-size geometry stays the original's, and it saves,
loads and refuses bad settings."""
import os
import sys

import pytest
import torch
from transformers import TrainingArguments, default_data_collator

sys.path.insert(0, os.path.dirname(__file__))
import training_matrix as tm  # noqa: E402

from mrl_hf import MRLTrainer, add_output_rotation  # noqa: E402
from mrl_hf.losses import nested_cosine_similarities  # noqa: E402
from mrl_hf.modeling import MRLBertModel  # noqa: E402
from mrl_hf.rotation import make_orthogonal  # noqa: E402

ENCODER_LR, ROTATION_LR = 0.1, 0.5


def rotated_model():
    model, data = tm.build("embed")
    add_output_rotation(model)
    return model, data


def train(model, data, out_dir, encoder_lr=ENCODER_LR, **kwargs):
    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=tm.GLOBAL_BATCH, max_steps=tm.STEPS,
                             learning_rate=encoder_lr, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
                             logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, save_strategy="no",
                             remove_unused_columns=False, train_sampling_strategy="sequential")
    trainer = MRLTrainer(model=model, args=args, train_dataset=data, rotation_learning_rate=ROTATION_LR, **kwargs)
    trainer.train()
    return trainer


def embeddings(model, data):
    batch = default_data_collator(data)
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], return_loss=False).embeddings


def test_training_matches_a_reference_loop_with_its_own_rate_and_the_polar_step(tmp_path):
    model, data = rotated_model()
    trainer = train(model, data, tmp_path)
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {ENCODER_LR, ROTATION_LR}

    ref, _ = rotated_model()
    ref.train()
    params = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    assert "projection.bias" not in params  # a shift would change the cosines
    for step in range(tm.STEPS):
        batch = default_data_collator(data[step * tm.GLOBAL_BATCH:(step + 1) * tm.GLOBAL_BATCH])
        for p in params.values():
            p.grad = None
        ref(**batch).loss.backward()
        with torch.no_grad():
            for name, p in params.items():
                p -= (ROTATION_LR if name == "projection.weight" else ENCODER_LR) * p.grad
        make_orthogonal(ref.projection)
    got = dict(model.named_parameters())
    for name, value in ref.named_parameters():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-11, msg=name)
    w = model.projection.weight
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0], dtype=w.dtype), rtol=0, atol=1e-12)
    assert (w - torch.eye(w.shape[0], dtype=w.dtype)).abs().max() > 1e-2  # it did turn


def test_a_frozen_encoder_keeps_every_full_size_similarity(tmp_path):
    model, data = rotated_model()
    before = embeddings(model, data)
    for name, p in model.named_parameters():
        if not name.startswith("projection."):
            p.requires_grad_(False)
    train(model.train(), data, tmp_path)
    after = embeddings(model, data)
    sims = lambda x: nested_cosine_similarities(x, x, tm.NESTING)  # noqa: E731
    torch.testing.assert_close(sims(after)[-1], sims(before)[-1], rtol=0, atol=1e-12)  # full size: unchanged
    assert (sims(after)[0] - sims(before)[0]).abs().max() > 1e-2  # the 4-dim prefix: moved


def test_the_rotation_saves_and_loads_as_a_projection(tmp_path):
    model, data = rotated_model()
    train(model, data, tmp_path / "run")
    model.save_pretrained(tmp_path / "saved")
    loaded = MRLBertModel.from_pretrained(tmp_path / "saved", dtype=torch.float64)
    assert loaded.config.embedding_dim == model.config.hidden_size
    torch.testing.assert_close(embeddings(loaded, data), embeddings(model, data), rtol=0, atol=1e-12)
    train(loaded.train(), data, tmp_path / "again")  # training the reloaded rotation again keeps its bias at zero
    assert not loaded.projection.bias.requires_grad and not loaded.projection.bias.any()


def test_bad_settings_are_refused_with_the_fix(tmp_path):
    plain, data = tm.build("embed")
    with pytest.raises(ValueError, match="add_output_rotation"):
        train(plain, data, tmp_path)
    for bad in (0, -1e-3, True, "0.01"):
        with pytest.raises(ValueError, match="rotation_learning_rate"):
            MRLTrainer(model=rotated_model()[0], args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True),
                       train_dataset=data, rotation_learning_rate=bad)
    model, _ = rotated_model()
    with pytest.raises(ValueError, match="already has a projection"):
        add_output_rotation(model)
    with torch.no_grad():
        model.projection.weight.mul_(2)
    with pytest.raises(ValueError, match="not a rotation"):
        train(model, data, tmp_path)
    model, _ = rotated_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="build the optimizer"):
        train(model, data, tmp_path, optimizers=(optimizer, None))


def test_a_rotation_kept_in_half_precision_is_still_a_rotation():
    from mrl_hf.rotation import check_rotation

    for dtype in (torch.bfloat16, torch.float16):  # make_orthogonal leaves about 4e-3 of bf16 rounding
        model, _ = rotated_model()
        model.to(dtype)
        make_orthogonal(model.projection)
        assert check_rotation(model) is model.projection
        with torch.no_grad():
            model.projection.weight.mul_(1.1)
        with pytest.raises(ValueError, match="not a rotation"):
            check_rotation(model)


def test_a_diverged_run_with_a_rotation_names_the_loss_not_the_svd(tmp_path):
    model, data = rotated_model()
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[data[0]["input_ids"][1]] = float("inf")  # a diverged row
    with pytest.raises(FloatingPointError, match="non-finite loss at nesting dim"):  # was torch's LinAlgError
        train(model, data, tmp_path)


def test_training_a_rotation_without_its_rate_warns_that_it_stops_being_one(tmp_path):
    import warnings

    model, data = rotated_model()
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True)
    with pytest.warns(UserWarning, match=r"projection is an output rotation .* pass rotation_learning_rate"):
        MRLTrainer(model=model, args=args, train_dataset=data)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*output rotation")
        MRLTrainer(model=model, args=args, train_dataset=data, rotation_learning_rate=ROTATION_LR)
        MRLTrainer(model=tm.build("embed")[0], args=args, train_dataset=data)  # no projection
    from mrl_hf.modeling import MRLResNetConfig, MRLResNetForImageClassification

    classifier = MRLResNetForImageClassification(MRLResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16],
                                                                 depths=[1, 1], num_labels=3))
    assert isinstance(classifier.projection, torch.nn.Identity)  # embedding_dim == width: crashed the check
    MRLTrainer(model=classifier, args=args)
