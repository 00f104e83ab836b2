"""MRL ResNet / ViT classifiers: outputs, save/load through the Auto classes, Trainer, bad input."""
import numpy as np
import pytest
import torch
from transformers import (AutoConfig, AutoModelForImageClassification, ResNetConfig, ResNetForImageClassification,
                          Trainer, TrainingArguments, ViTConfig, ViTModel)

from mrl_hf.data.images import ImageClassificationDataset, to_pixel_values
from mrl_hf.modeling.vision import (MRLResNetConfig, MRLResNetForImageClassification, MRLViTConfig,
                                    MRLViTForImageClassification)

RESNET = dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16, 32], depths=[1, 1, 1], layer_type="basic")
VIT = dict(image_size=16, patch_size=8, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=64)


def tiny(kind="resnet", **kwargs):
    torch.manual_seed(0)
    if kind == "resnet":
        return MRLResNetForImageClassification(MRLResNetConfig(**RESNET, num_labels=5, **kwargs))
    return MRLViTForImageClassification(MRLViTConfig(**VIT, num_labels=5, **kwargs))


@pytest.mark.parametrize("kind", ["resnet", "vit"])
@pytest.mark.parametrize("efficient", [False, True])
def test_outputs_losses_and_features(kind, efficient):
    model = tiny(kind, efficient=efficient)
    nesting = model.config.nesting_list
    assert nesting == [8, 16, 32]
    x, y = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    out = model(pixel_values=x, labels=y)
    assert out.per_dim_losses.shape == (3,)
    # loss is the sum of the per-dim cross-entropies (c_m = 1), each from the nested logits
    expected = [torch.nn.functional.cross_entropy(lg, y) for lg in out.nested_logits]
    torch.testing.assert_close(out.per_dim_losses, torch.stack(expected).detach())
    torch.testing.assert_close(out.loss, sum(expected))
    assert out.logits.shape == (6, 5) and torch.equal(out.logits, out.nested_logits[-1])
    assert out.embeddings.shape == (6, 32)
    out.loss.backward()
    model.eval()
    full = model(pixel_values=x).embeddings
    feats = model.get_image_features(x, truncate_dim=8, normalize=True)
    torch.testing.assert_close(feats, torch.nn.functional.normalize(full[:, :8], dim=-1))
    # logits at a nesting dim only use the first m features
    torch.testing.assert_close(model.logits_at(x, 16), model(pixel_values=x).nested_logits[1])


def test_the_vit_classifiers_return_the_attentions_they_are_asked_for():
    """They were computed and dropped: out.attentions raised AttributeError, as plain ViTForImageClassification
    returns them."""
    from mrl_hf.modeling import MRLImageConfig, MRLModelForImageClassification

    x = torch.randn(2, 1, 16, 16)
    auto = MRLModelForImageClassification(MRLImageConfig(backbone_config=ViTConfig(**VIT), num_labels=3))
    for model in (tiny("vit"), auto):
        model.set_attn_implementation("eager")
        out = model(pixel_values=x, output_attentions=True)
        assert len(out.attentions) == VIT["num_hidden_layers"] and out.attentions[0].shape == (2, 2, 5, 5)
        assert model(pixel_values=x).attentions is None
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['output_attentions'\]"):
        tiny("resnet")(pixel_values=x, output_attentions=True)  # a ResNet has none


def test_relative_importance_weights_the_loss():
    model = tiny(relative_importance=[0, 0, 2])
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    out = model(pixel_values=x, labels=y)
    torch.testing.assert_close(out.loss.detach(), 2 * out.per_dim_losses[-1])


def test_save_load_auto_classes_and_truncate_override(tmp_path):
    model = tiny(efficient=True, nesting_list=[4, 8, 32]).eval()
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is MRLResNetConfig
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, truncate_dim=8).eval()
    assert type(loaded) is MRLResNetForImageClassification
    assert loaded.config.nesting_list == [4, 8, 32] and loaded.config.efficient
    x = torch.randn(3, 1, 20, 20)
    torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    assert loaded.get_image_features(x).shape == (3, 8)


def test_fixed_feature_baseline_is_nesting_list_of_one():
    model = tiny(nesting_list=[4])
    assert model.config.embedding_dim == 4 and isinstance(model.projection, torch.nn.Linear)
    assert model.projection.out_features == 4 and len(model.head.classifiers) == 1
    assert model(pixel_values=torch.randn(2, 1, 16, 16)).embeddings.shape == (2, 4)
    assert isinstance(tiny().projection, torch.nn.Identity)  # no projection when sizes agree


def test_from_backbone_copies_weights_and_freezes_all_but_last_stages(tmp_path):
    torch.manual_seed(1)
    plain = ResNetForImageClassification(ResNetConfig(**RESNET, num_labels=3))
    plain.save_pretrained(tmp_path)
    model = MRLResNetForImageClassification.from_backbone(str(tmp_path), num_labels=5, nesting_list=[4, 8, 32],
                                                          trainable_stages=1)
    for name, tensor in plain.resnet.state_dict().items():
        torch.testing.assert_close(model.resnet.state_dict()[name], tensor)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"resnet.encoder", "head.classifiers"}
    assert all(not p.requires_grad for p in model.resnet.encoder.stages[:2].parameters())
    model.train()
    assert not model.resnet.encoder.stages[0].training and model.resnet.encoder.stages[2].training
    running = model.resnet.embedder.embedder.normalization.running_mean.clone()
    model(pixel_values=torch.randn(4, 1, 16, 16), labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    torch.testing.assert_close(model.resnet.embedder.embedder.normalization.running_mean, running)

    vit = MRLViTForImageClassification.from_backbone(ViTModel(ViTConfig(**VIT)), num_labels=4, trainable_stages=0)
    assert {n for n, p in vit.named_parameters() if p.requires_grad} == {
        f"head.classifiers.{i}.{w}" for i in range(3) for w in ("weight", "bias")}
    with pytest.raises(ValueError, match="trainable_stages=9 must be an int in 0..3"):
        vit.freeze_backbone(9)
    with pytest.raises(TypeError, match="needs a ResNetModel"):
        MRLResNetForImageClassification.from_backbone(ViTModel(ViTConfig(**VIT)), num_labels=4)


def test_trains_with_trainer_and_datasets(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 64)
    images = (rng.random((64, 16, 16)) * 60 + labels[:, None, None] * 40).astype(np.uint8)  # class = brightness
    ds = datasets.Dataset.from_dict({"pixel_values": to_pixel_values(images).numpy(), "labels": labels})
    model = tiny()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=4,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                             logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds.with_format("torch"),
                      eval_dataset=ImageClassificationDataset(to_pixel_values(images), labels))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.7 * losses[0]
    pred = trainer.predict(trainer.eval_dataset)
    logits, nested = pred.predictions  # per_dim_losses / embeddings are skipped at inference
    assert logits.shape == (64, 5) and len(nested) == 3


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_bad_input_raises_clear_errors(kind):
    model = tiny(kind)
    good = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="has 3 channels, but config.num_channels=1"):
        model(pixel_values=torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expected \(batch, 1, height, width\)"):
        model(pixel_values=torch.randn(2, 16, 16))
    with pytest.raises(ValueError, match=r"label 5 is outside 0..4 \(config.num_labels=5\)"):
        model(pixel_values=good, labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="truncate_dim=33 is out of range; choose a value in 1..32"):
        model.get_image_features(good, truncate_dim=33)
    with pytest.raises(TypeError, match="labels must be integer class ids"):
        model(pixel_values=good, labels=torch.tensor([0.0, 1.0]))
    if kind == "vit":
        with pytest.raises(ValueError, match=r"built for config.image_size=\(16, 16\); resize"):
            model(pixel_values=torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"precisions=\['binary'\]: .*a classifier is trained on its logits only"):
        type(model)(type(model.config)(**{**model.config.to_dict(), "precisions": ["binary"]}))
    with pytest.raises(ValueError, match="truncate_dim=0 is out of range"):
        MRLResNetConfig(**RESNET, truncate_dim=0)
    with pytest.raises(ValueError, match="ends with 16, but the embedding dim is 32"):
        MRLResNetConfig(**RESNET, nesting_list=[8, 16], embedding_dim=32)


def test_from_backbone_takes_settings_the_backbone_also_has():
    """An mrl_hf model as the backbone (its config carries nesting_list, efficient) or a plain field given again
    (hidden_dropout_prob) used to raise 'multiple values for keyword argument'; the given value wins."""
    from transformers import ViTConfig, ViTModel

    source = MRLResNetForImageClassification(MRLResNetConfig(**RESNET, num_labels=5, nesting_list=[4, 8, 16, 32]))
    model = MRLResNetForImageClassification.from_backbone(source, num_labels=3, nesting_list=[8, 16, 32],
                                                          efficient=True)
    assert model.config.nesting_list == [8, 16, 32] and model.config.efficient and model.config.num_labels == 3
    vit = MRLViTForImageClassification.from_backbone(ViTModel(ViTConfig(**VIT)), num_labels=4,
                                                     hidden_dropout_prob=0.1)
    assert vit.config.hidden_dropout_prob == 0.1 and vit.config.num_labels == 4


def test_labels_must_be_class_ids_and_head_sizes_may_be_numpy_ints():
    from mrl_hf.heads import MatryoshkaHead

    with pytest.raises(ValueError, match=r"labels must be integer class ids, got dtype float64 \(e.g. 0.2\)"):
        ImageClassificationDataset(torch.zeros(3, 1, 4, 4), np.array([0.2, 1.9, 2.0]))  # were truncated to 0, 1, 2
    with pytest.raises(ValueError, match="map class names"):
        ImageClassificationDataset(torch.zeros(2, 1, 4, 4), ["cat", "dog"])
    assert ImageClassificationDataset(torch.zeros(2, 1, 4, 4), np.array([1.0, 2.0])).labels.tolist() == [1, 2]
    head = MatryoshkaHead([4, 8], np.array([0, 3, 9]).max() + 1)  # a numpy int, e.g. labels.max() + 1
    assert type(head.num_classes) is int and head.num_classes == 10


def test_image_inputs_that_used_to_pass_silently_are_refused():
    """to_pixel_values divided float images by 255 again (a near-constant image); load_fashion_mnist took limit=-1 as
    a slice end (9,999 test images)."""
    from mrl_hf.data.images import load_fashion_mnist

    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8)).astype(np.uint8)
    with pytest.raises(TypeError, match=r"images must be uint8 .* got float32"):
        to_pixel_values(images.astype(np.float32) / 255)
    assert to_pixel_values(images).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="limit=-1 must be an int >= 0"):
        load_fashion_mnist("test", limit=-1)
    with pytest.raises(ValueError, match=r"limit=np.int64\(-1\) must be an int >= 0"):  # numpy ints are ints
        load_fashion_mnist("test", limit=np.int64(-1))
    with pytest.raises(ValueError, match="limit=2.0 must be an int"):
        load_fashion_mnist("test", limit=2.0)


def test_resnet_refuses_keyword_arguments_it_would_drop():
    from mrl_hf.modeling import MRLResNetConfig, MRLResNetForImageClassification

    model = MRLResNetForImageClassification(MRLResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16],
                                                            depths=[1, 1], num_labels=5, nesting_list=[4, 8, 16]))
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['label_smoothing'\].*smoothing="):
        model(pixel_values=x, labels=y, label_smoothing=0.5)
    assert model(pixel_values=x, labels=y, smoothing=0.5).loss.item() != model(pixel_values=x, labels=y).loss.item()
