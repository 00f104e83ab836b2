"""Two CPU processes (torch.distributed, gloo) on halves of a global batch give the loss and, after DDP's
gradient averaging, the gradients of one process on the whole batch: every process sees all negatives."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mrl_hf.distributed import all_gather_with_grad

WORLD = 2


def _model_and_batch():
    from test_align import batch, tiny_model

    model = tiny_model(relative_importance=[1.0, 0.5, 2.0, 1.0]).double()
    ids, mask, pixels = batch(n=7)
    return model, ids, mask, pixels.double()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, init_file, out_dir, splits):
    os.environ["HF_HUB_OFFLINE"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        results = {}
        for name, (split, gather) in splits.items():
            model, ids, mask, pixels = _model_and_batch()
            model.config.gather_across_processes = gather
            start = sum(split[:rank])
            rows = slice(start, start + split[rank])
            out = model(input_ids=ids[rows], attention_mask=mask[rows], pixel_values=pixels[rows])
            out.loss.backward()
            for p in model.parameters():  # what DDP / accelerate do: average gradients over processes
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= WORLD
            results[name] = {"loss": out.loss.detach(), "per_dim": out.per_dim_losses, "grads": _grads(model)}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    splits = {"even": ([4, 3], True), "uneven": ([2, 5], True), "no_gather": ([4, 3], False)}
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), splits), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model, ids, mask, pixels = _model_and_batch()
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    out.loss.backward()
    expected = _grads(model)
    for name in ("even", "uneven"):
        for result in ranks:
            torch.testing.assert_close(result[name]["loss"], out.loss.detach(), rtol=1e-12, atol=0)
            torch.testing.assert_close(result[name]["per_dim"], out.per_dim_losses, rtol=1e-12, atol=0)
            assert result[name]["grads"].keys() == expected.keys()
            for key, grad in expected.items():
                torch.testing.assert_close(result[name]["grads"][key], grad, rtol=1e-9, atol=1e-12, msg=key)

    # Without gathering each process only contrasts its own 4 or 3 pairs: a different (local) loss.
    for rank, rows in enumerate((slice(0, 4), slice(4, 7))):
        local, *_ = _model_and_batch()
        local_loss = local(input_ids=ids[rows], attention_mask=mask[rows], pixel_values=pixels[rows]).loss
        torch.testing.assert_close(ranks[rank]["no_gather"]["loss"], local_loss.detach(), rtol=1e-12, atol=0)
        assert not torch.isclose(local_loss, out.loss)


def test_all_gather_is_identity_in_one_process():
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x
