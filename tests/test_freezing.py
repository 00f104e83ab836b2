"""mrl_hf.freeze_bottom: which parameters it freezes on each kind of encoder, that MRLTrainer then trains the rest as
a reference loop does (the frozen ones keep their values exactly), activation checkpointing still reaches the
trainable blocks, and bad settings are refused with the fix."""
import os
import sys

import pytest
import torch
from transformers import TrainingArguments, default_data_collator

sys.path.insert(0, os.path.dirname(__file__))
import training_matrix as tm  # noqa: E402

from mrl_hf import MRLTrainer, freeze_bottom  # noqa: E402
from mrl_hf.modeling import MRLBertConfig, MRLBertModel  # noqa: E402

LR = 0.1


def two_block_bert():
    model, data = tm.build("embed")
    torch.manual_seed(0)
    config = MRLBertConfig(nesting_list=tm.NESTING, **{**tm.TINY_BERT, "num_hidden_layers": 2})
    return MRLBertModel(config).double(), data


def test_it_freezes_the_embedding_layer_and_the_first_blocks():
    model, _ = two_block_bert()
    names = freeze_bottom(model, blocks=1)
    assert names == [n for n, _ in model.named_parameters()
                     if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    assert any(".position_embeddings." in n for n in names) and any("LayerNorm" in n for n in names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("bert.encoder.layer.1.") for n in trainable)
    model, _ = two_block_bert()
    assert all(n.startswith("bert.embeddings.") for n in freeze_bottom(model))  # blocks=0: the embedding layer only


def test_it_finds_the_embeddings_and_blocks_of_a_decoder_backbone():
    model, _ = tm.build("embed_auto")  # Qwen3: embed_tokens and layers, no `embeddings` module
    names = freeze_bottom(model, blocks=1)
    assert names and all(n.startswith(("backbone.embed_tokens.", "backbone.layers.0.")) for n in names)
    assert any(n.startswith("backbone.layers.0.") for n in names)
    # GPT-2 keeps learned positions beside its token table (wpe was left training)
    from transformers import AutoConfig

    from mrl_hf.modeling import MRLModelForTextEmbedding, MRLTextEmbeddingConfig

    gpt2 = MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=AutoConfig.for_model(
        "gpt2", n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64), pooling="last_token"))
    assert freeze_bottom(gpt2) == ["backbone.wte.weight", "backbone.wpe.weight"]


def test_it_freezes_the_whole_embedding_layer_of_the_masked_lm_of_any_backbone():
    """MRLModelForMaskedLM's base_model is a BertForMaskedLM, whose own is the encoder: only the word embeddings used
    to be frozen, and the position / token-type embeddings and their norm trained on."""
    from transformers import BertConfig

    from mrl_hf.modeling import MRLMaskedLMConfig, MRLModelForMaskedLM

    torch.manual_seed(0)
    backbone = BertConfig(**{**tm.TINY_BERT, "num_hidden_layers": 2})
    model = MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=backbone, nesting_list=tm.NESTING))
    names = freeze_bottom(model, blocks=1)
    expected = [n for n, _ in model.named_parameters() if ".bert.embeddings." in n or ".bert.encoder.layer.0." in n]
    assert names == expected and any(".position_embeddings." in n for n in names)
    assert any("embeddings.LayerNorm" in n for n in names)


def test_the_trainer_trains_the_rest_as_a_reference_loop(tmp_path):
    model, data = two_block_bert()
    frozen = set(freeze_bottom(model, blocks=1))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=tm.GLOBAL_BATCH, max_steps=tm.STEPS,
                             learning_rate=LR, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
                             logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, save_strategy="no",
                             remove_unused_columns=False, train_sampling_strategy="sequential")
    trainer = MRLTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for n, p in model.named_parameters() if n in frozen)

    ref, _ = two_block_bert()
    ref.train()
    params = {n: p for n, p in ref.named_parameters() if n not in frozen}
    for step in range(tm.STEPS):
        batch = default_data_collator(data[step * tm.GLOBAL_BATCH:(step + 1) * tm.GLOBAL_BATCH])
        grads = torch.autograd.grad(ref(**batch).loss, list(params.values()))
        with torch.no_grad():
            for p, g in zip(params.values(), grads):
                p -= LR * g
    got = dict(model.named_parameters())
    for name, value in ref.named_parameters():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-11, msg=name)
        if name in frozen:
            assert torch.equal(got[name], start[name]), name
    name = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.equal(got[name], start[name])


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_still_trains_the_unfrozen_blocks(use_reentrant):
    model, data = two_block_bert()
    freeze_bottom(model, blocks=1)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model.train()
    model(**default_data_collator(data[:8])).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.startswith("bert.encoder.layer.1."), name


def test_bad_settings_are_refused_with_the_fix():
    model, _ = two_block_bert()
    for blocks in (-1, True, 1.0):
        with pytest.raises(ValueError, match=r"blocks=.* must be a whole number >= 0"):
            freeze_bottom(model, blocks)
    with pytest.raises(ValueError, match="blocks=3, but BertModel has only 2; give at most 2"):
        freeze_bottom(model, 3)
    assert all(p.requires_grad for p in model.parameters())  # a refused call froze nothing
    align, _ = tm.build("align")
    with pytest.raises(ValueError, match="one per tower"):
        freeze_bottom(align)
