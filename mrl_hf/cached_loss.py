"""A cached (GradCache-style) nested contrastive loss: large batches at the activation memory of small ones.

Gao et al. (2021), "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup": the in-batch contrastive
loss needs every embedding of the batch, but its gradient reaches the encoder only through them. So:

1. embed the batch in mini-batches of ``mini_batch_size`` rows without autograd, keeping each mini-batch's random
   state (dropout);
2. compute the nested loss (and a teacher term) on those embeddings, and its gradient with respect to them;
3. when the Trainer calls ``backward``, embed each mini-batch again, with autograd and the same random state, and
   back-propagate the cached gradient into the encoder, one mini-batch's activations at a time.

The gradient equals the uncached loss's (same dropout masks, up to float rounding); the encoder runs twice per row.
"""
from __future__ import annotations

import contextlib

import torch

# (model keyword, batch key) per part of a pair batch; positives and negatives are embedded like anchors
_PARTS = (
    (("input_ids", "input_ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "token_type_ids")),
    (("input_ids", "positive_input_ids"), ("attention_mask", "positive_attention_mask")),
    (("input_ids", "negative_input_ids"), ("attention_mask", "negative_attention_mask")),
)


class _RandomState:
    """The CPU (and, on a GPU, that device's) random state, to replay one mini-batch's dropout masks."""

    def __init__(self, device: torch.device):
        self.device = device if device.type == "cuda" else None
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=[self.device] if self.device is not None else []):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _mini_batches(inputs: dict, mini_batch_size: int) -> list[list[dict]]:
    """Per part present in ``inputs`` (anchors, positives, negatives), its model keyword arguments in row chunks."""
    parts = []
    for part in _PARTS:
        if inputs.get(part[0][1]) is None:
            continue
        n = inputs[part[0][1]].shape[0]
        parts.append([{kw: inputs[key][s:s + mini_batch_size] for kw, key in part if inputs.get(key) is not None}
                      for s in range(0, n, mini_batch_size)])
    return parts


def cached_pair_loss(model, config, inputs: dict, mini_batch_size: int, extra_term=None):
    """``(loss, outputs)`` like the model's own pair loss, computed in mini-batches; ``loss.backward()`` runs the
    encoder again per mini-batch and puts the exact gradient in the model's parameters.

    ``model`` is what the Trainer trains (its forward, so autocast and activation checkpointing apply as usual).
    ``extra_term(loss, outputs) -> (loss, outputs)`` adds a term on the anchors' embeddings (the teacher).
    """
    from .modeling.text_common import pair_contrastive_loss

    missing = [key for key in ("input_ids", "positive_input_ids") if inputs.get(key) is None]
    if missing:
        raise ValueError(f"mini_batch_size={mini_batch_size} (the cached contrastive loss) needs (anchor, positive) "
                         f"pairs, but the batch has no {' / '.join(missing)} (keys: {sorted(inputs)}); collate pairs "
                         "with mrl_hf.data.collator.PairCollator, or leave mini_batch_size=None.")
    per_part = _mini_batches(inputs, mini_batch_size)
    chunks = [chunk for part in per_part for chunk in part]
    states = []
    with torch.no_grad():
        embedded = []
        for chunk in chunks:
            states.append(_RandomState(next(iter(chunk.values())).device))
            embedded.append(model(**chunk, return_loss=False).embeddings)
    leaves = [e.detach().requires_grad_() for e in embedded]
    it = iter(leaves)
    joined = [torch.cat([next(it) for _ in part]) for part in per_part]
    with torch.enable_grad():
        loss, per_dim = pair_contrastive_loss(config, joined[0], joined[1:])
        outputs = {"loss": loss, "per_dim_losses": per_dim, "embeddings": joined[0]}
        if extra_term is not None:
            loss, outputs = extra_term(loss, outputs)
        grads = torch.autograd.grad(loss, leaves)

    # DDP only: DeepSpeed's engine refuses no_sync under ZeRO-2/3 (and partitions the gradients itself)
    no_sync = model.no_sync if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None

    def backward_through_encoder(grad_output):
        with torch.enable_grad():
            for i, (chunk, state, grad) in enumerate(zip(chunks, states, grads)):
                # one gradient all-reduce per step, at the last mini-batch: processes holding different numbers of
                # rows (even_batches=False) would otherwise make different numbers of collective calls and hang
                last = i == len(chunks) - 1
                with contextlib.nullcontext() if no_sync is None or last else no_sync():
                    with state.replay():
                        embeddings = model(**chunk, return_loss=False).embeddings
                    (embeddings * (grad * grad_output).to(embeddings.dtype)).sum().backward()

    cached = loss.detach().requires_grad_()
    cached.register_hook(backward_through_encoder)
    outputs = {**outputs, "loss": cached, "per_dim_losses": outputs["per_dim_losses"].detach(),
               "embeddings": joined[0].detach()}
    return cached, outputs
