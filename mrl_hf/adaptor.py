"""Matryoshka for vectors from anywhere: a small adaptor trained on a frozen encoder's embeddings.

``MatryoshkaAdaptor`` maps an embedding ``e`` (numpy or torch, from any library or API) to
``z = W (e - mu)`` followed by a residual MLP ``z + MLP(z)``, so that the prefixes ``z[:m]`` keep the
similarity structure of the full ``e``. ``pca_rotation(embeddings)`` is the training-free baseline: the same
adaptor with ``W`` the principal axes (largest variance first) and the MLP switched off; ``fit`` starts from it.

    adaptor = MatryoshkaAdaptor(384).fit(train_embeddings)      # unlabelled vectors only
    small = adaptor.transform(query_embeddings, dim=64)         # (N, 64), L2-normalised
    adaptor.save_pretrained("my-adaptor"); MatryoshkaAdaptor.from_pretrained("my-adaptor")

An *asymmetric* adaptor (``fit(documents, queries=query_embeddings)``) centres queries on their own mean and documents
on theirs; ``transform(..., task="query")`` picks the query side (sentence-transformers' ``encode_query``).
"""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .embeddings import as_float32_matrix, principal_axes, truncate_embeddings
from .nesting import halving_nesting_list, validate_dim, validate_nesting_list

ADAPTOR_CONFIG_NAME = "adaptor_config.json"
ADAPTOR_WEIGHTS_NAME = "adaptor.safetensors"


def check_embeddings(embeddings, dim: int | None = None, name: str = "embeddings") -> torch.Tensor:
    """``embeddings`` as a float32 ``(N, d)`` tensor on its own device (``as_float32_matrix``), non-empty and of
    width ``dim`` when given, or a ``ValueError``/``TypeError`` saying what is wrong."""
    tensor = as_float32_matrix(embeddings, name, as_tensor=True)
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); pass at least one embedding.")
    if dim is not None and tensor.shape[1] != dim:
        raise ValueError(f"{name} has dim {tensor.shape[1]}, but this adaptor was built for dim {dim}; "
                         "use embeddings from the encoder the adaptor was fitted on.")
    return tensor


class MatryoshkaAdaptor(nn.Module):
    """Maps frozen embeddings of size ``input_dim`` to Matryoshka embeddings of the same size.

    ``nesting_list`` are the prefix sizes trained (default: the halving list of ``input_dim``);
    ``hidden_dim`` the width of the residual MLP (0: a linear map only).
    ``asymmetric``: queries are centred on their own mean (``query_mean``) instead of ``mean``; ``fit`` and
    ``pca_rotation`` make an adaptor asymmetric when given ``queries``.
    A fresh adaptor is the identity (``W = I``, ``mu = 0``, MLP output 0).
    """

    def __init__(self, input_dim: int, nesting_list: Sequence[int] | None = None, hidden_dim: int | None = None,
                 asymmetric: bool = False):
        super().__init__()
        validate_dim(input_dim, 1 << 20, name="input_dim")
        self.input_dim = int(input_dim)
        self.nesting_list = validate_nesting_list(
            nesting_list if nesting_list is not None else halving_nesting_list(input_dim, min_dim=min(8, input_dim)),
            dim=input_dim)
        self.hidden_dim = int(input_dim if hidden_dim is None else hidden_dim)
        if self.hidden_dim < 0:
            raise ValueError(f"hidden_dim={hidden_dim} must be >= 0 (0 turns the MLP off).")
        self.register_buffer("mean", torch.zeros(input_dim))
        self.asymmetric = False
        if asymmetric:
            self._make_asymmetric()
        self.linear = nn.Linear(input_dim, input_dim, bias=False)
        nn.init.eye_(self.linear.weight)
        if self.hidden_dim:
            self.mlp = nn.Sequential(nn.Linear(input_dim, self.hidden_dim), nn.GELU(),
                                     nn.Linear(self.hidden_dim, input_dim))
            nn.init.zeros_(self.mlp[2].weight)  # start as the pure linear map
            nn.init.zeros_(self.mlp[2].bias)
        else:
            self.mlp = None

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, nesting_list={self.nesting_list}, hidden_dim={self.hidden_dim}"
                + (", asymmetric=True" if self.asymmetric else ""))

    def _make_asymmetric(self) -> None:
        if not self.asymmetric:
            self.register_buffer("query_mean", self.mean.detach().clone())
            self.asymmetric = True

    def forward(self, embeddings: torch.Tensor, task: str | None = None) -> torch.Tensor:
        """Full-size adapted embeddings (not normalised), differentiable. ``task="query"`` centres on the query mean
        when the adaptor is asymmetric; ``None`` and ``"document"`` on the documents' (a symmetric adaptor treats all
        three alike)."""
        mean = self.query_mean if check_task(task) == "query" and self.asymmetric else self.mean
        z = self.linear(F.normalize(embeddings, dim=-1) - mean)
        return z if self.mlp is None else z + self.mlp(z)

    # ---- initialisation and training ------------------------------------------------------------------

    @torch.no_grad()
    def init_pca(self, embeddings, center: bool = True, queries=None) -> "MatryoshkaAdaptor":
        """Set ``W`` to the principal axes of ``embeddings`` (largest variance first) and the MLP output to 0.
        With ``queries`` (embeddings of query texts) the adaptor becomes asymmetric: ``embeddings`` are the
        documents, and queries are centred on the mean of ``queries``; without, an asymmetric adaptor keeps its
        ``query_mean``."""
        x = F.normalize(check_embeddings(embeddings, self.input_dim), dim=-1)
        if x.shape[0] < 2:
            raise ValueError(f"embeddings has {x.shape[0]} row; PCA needs at least 2.")
        if not center and (queries is not None or self.asymmetric):
            raise ValueError("an asymmetric adaptor centres queries and documents on their own means, which "
                             "center=False turns off; pass center=True, or leave queries out of a new adaptor.")
        if queries is None and self.asymmetric and not self.query_mean.any():  # MatryoshkaAdaptor(asymmetric=True)
            raise ValueError("this adaptor is asymmetric but has no query mean yet (queries would not be centred "
                             "while documents are): pass queries= (embeddings of unlabelled queries), or call "
                             "set_query_mean(queries) first.")
        query_mean = None if queries is None else _mean_direction(queries, self.input_dim)
        mean, axes = principal_axes(x, center)
        self.mean.copy_(mean.float())
        self.linear.weight.copy_(axes.float())
        if self.mlp is not None:
            self.mlp[2].weight.zero_()
            self.mlp[2].bias.zero_()
        if query_mean is not None:
            self._store_query_mean(query_mean)
        return self

    @torch.no_grad()
    def set_query_mean(self, queries) -> "MatryoshkaAdaptor":
        """Make the adaptor asymmetric: queries are centred on the mean of the (L2-normalised) ``queries``. (On an
        adaptor attached to a model, the model's saved config follows: it is rebuilt from the adaptor on save.)"""
        self._store_query_mean(_mean_direction(queries, self.input_dim))
        return self

    def _store_query_mean(self, query_mean: torch.Tensor) -> None:
        self._make_asymmetric()
        self.query_mean.copy_(query_mean.to(self.mean.device))

    def fit(self, embeddings, epochs: int = 20, batch_size: int = 512, lr: float = 1e-3, weight_decay: float = 0.0,
            init: str | None = "pca", top_k: int = 10, pairwise_weight: float = 1.0, topk_weight: float = 1.0,
            listwise_weight: float = 1.0, listwise_temperature: float = 0.05,
            relative_importance: Sequence[float] | None = None, center_teacher: bool = True, seed: int = 0,
            verbose: bool = False, pairs=None, pair_weight: float = 1.0, pair_temperature: float = 0.05,
            precisions=None, quantization_weight: float = 1.0, binary_surrogate: str = "ste",
            queries=None) -> "MatryoshkaAdaptor":
        """Train on unlabelled ``embeddings`` (N, input_dim) so every prefix matches their similarities.

        The teacher is the input itself: ``similarity_distillation_loss`` between ``self(e)`` and ``e`` on random
        batches. ``init="pca"`` starts from ``pca_rotation`` (``None`` keeps the current weights). The listwise
        term is on by default: on held-out retrieval it beat pairwise + top-k alone at low dims (docs/matryoshkafy.md).
        ``center_teacher``: match the cosine similarities of the inputs minus their mean (what the PCA start keeps)
        rather than of the raw inputs, whose similarities are dominated by the direction all of them share; it
        gained up to 5 points of hit@10 with in-domain text (docs/matryoshkafy.md).

        ``pairs=(queries, positives)``: embeddings of a few labelled (query, relevant text) pairs, row i with row i.
        Each step then also adds ``pair_weight`` times the nested InfoNCE of the adapted pairs (in-batch negatives,
        ``pair_temperature``), the Matryoshka-Adaptor paper's supervised variant. A batch never holds the same query
        or the same positive twice (``distinct_pair_batch``): many queries of one document would otherwise be each
        other's negatives.

        ``precisions`` / ``quantization_weight`` / ``binary_surrogate``: train the prefixes also as the codes they will
        be served as (``mrl_hf.quantization``; e.g. ``{"binary": [64, 128]}``), in both terms.

        ``queries``: embeddings of unlabelled query texts (e.g. a sample of what users search for), when the queries
        are a different kind of text from the documents (reviews searching plots, questions searching manuals). Then
        ``embeddings`` are the documents: the PCA start and the fit use them alone, so the short prefixes keep the
        directions along which the documents differ, and queries are centred on their own mean (``transform(...,
        task="query")``). With in-domain text it took rotten-tomatoes review -> plot from 83% to 91-93% of the
        original's full-size hit@10 at 64 dims; on chatterbot, where questions and answers are the same kind of text,
        the symmetric fit on all texts is better at 16-32 and 128 dims (docs/matryoshkafy.md). With ``init=None``
        the current weights and centre are kept and ``queries`` only sets the query mean.
        """
        training = _needs_mrl_hf("fitting an adaptor", "distillation")
        similarity_distillation_loss = training.similarity_distillation_loss
        x = check_embeddings(embeddings, self.input_dim)
        if x.shape[0] < 2:
            raise ValueError(f"embeddings has {x.shape[0]} row; fitting needs at least 2 (ideally thousands).")
        if init not in ("pca", None):
            raise ValueError(f"init={init!r} must be 'pca' or None (keep the current weights).")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs={epochs!r} must be an int >= 0.")
        # every argument is checked before the weights are reset: a refused refit keeps the trained adaptor
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")
        if not lr >= 0 or not weight_decay >= 0:
            raise ValueError(f"lr={lr!r} and weight_decay={weight_decay!r} must be >= 0.")
        training.check_quantization_options(quantization_weight, binary_surrogate)  # also when no code is trained
        with torch.no_grad():  # the loss checks its own settings (sizes' weights, terms, codes) on a few rows
            rows = F.normalize(x[:8], dim=-1).to(self.linear.weight.device, self.linear.weight.dtype)
            similarity_distillation_loss(self(rows), rows, self.nesting_list, relative_importance, pairwise_weight,
                                         topk_weight, top_k, listwise_weight, listwise_temperature, precisions,
                                         quantization_weight, binary_surrogate)
        pair_q = pair_p = None
        if pairs is not None:
            if not (isinstance(pairs, (tuple, list)) and len(pairs) == 2):
                raise ValueError("pairs must be (query_embeddings, positive_embeddings), row i of each a pair.")
            pair_q, pair_p = (check_embeddings(e, self.input_dim, name).to(self.linear.weight.device)
                              for e, name in zip(pairs, ("pairs[0] (queries)", "pairs[1] (positives)")))
            if pair_q.shape[0] != pair_p.shape[0] or pair_q.shape[0] < 2:
                raise ValueError(f"pairs hold {pair_q.shape[0]} queries and {pair_p.shape[0]} positives; give the same "
                                 "number of each, at least 2.")
            if not pair_weight > 0 or not pair_temperature > 0:
                raise ValueError(f"pair_weight={pair_weight} and pair_temperature={pair_temperature} must be > 0.")
            pair_groups = (_row_groups(pair_q), _row_groups(pair_p))
            distinct = [max(g) + 1 for g in pair_groups]
            if min(distinct) < 2:
                raise ValueError(f"pairs hold {distinct[0]} distinct queries and {distinct[1]} distinct positives; the "
                                 "supervised term contrasts each pair with other pairs, so give at least 2 of each.")
            nested_contrastive_loss = training.nested_contrastive_loss
        generator = torch.Generator().manual_seed(seed)
        if init == "pca":
            self.init_pca(x, queries=queries)
            if self.mlp is not None:
                # drawn on the CPU (the seeded generator's device), so the start is the same on any device
                weight = torch.empty(self.mlp[0].weight.shape, dtype=self.mlp[0].weight.dtype)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
                with torch.no_grad():
                    self.mlp[0].weight.copy_(weight)
                nn.init.zeros_(self.mlp[0].bias)
        elif queries is not None:
            self.set_query_mean(queries)
        x = F.normalize(x, dim=-1).to(self.linear.weight.device)
        teacher = x - x.mean(0) if center_teacher else x
        batch_size = min(batch_size, x.shape[0])
        steps_per_epoch = max(1, x.shape[0] // batch_size)
        total = max(1, epochs * steps_per_epoch)  # epochs=0: the start (PCA) alone, no schedule to divide by 0
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        self.train()
        for epoch in range(epochs):
            order = torch.randperm(x.shape[0], generator=generator).to(x.device)
            running = torch.zeros(len(self.nesting_list), device=x.device)
            for step in range(steps_per_epoch):
                rows = order[step * batch_size:(step + 1) * batch_size]
                out = similarity_distillation_loss(
                    self(x[rows]), teacher[rows], self.nesting_list, relative_importance, pairwise_weight, topk_weight,
                    top_k, listwise_weight, listwise_temperature, precisions, quantization_weight, binary_surrogate)
                loss = out.loss
                if pair_q is not None:
                    picked = distinct_pair_batch(pair_groups, batch_size, generator).to(x.device)
                    supervised = nested_contrastive_loss(self(pair_q[picked], "query"), self(pair_p[picked]),
                                                         self.nesting_list,
                                                         pair_temperature, relative_importance, precisions=precisions,
                                                         quantization_weight=quantization_weight,
                                                         binary_surrogate=binary_surrogate)
                    loss = loss + pair_weight * supervised.loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                running += out.per_dim_losses
            if verbose:
                per_dim = ", ".join(f"{m}: {v:.4f}" for m, v in zip(self.nesting_list,
                                                                    (running / steps_per_epoch).tolist()))
                print(f"epoch {epoch + 1}/{epochs}  loss per dim  {per_dim}")
        self.eval()
        return self

    # ---- inference --------------------------------------------------------------------------------------

    @torch.no_grad()
    def transform(self, embeddings, dim: int | None = None, normalize: bool = True, batch_size: int = 8192,
                  task: str | None = None):
        """Adapted embeddings cut to ``dim`` (``None``: full) and L2-normalised; numpy in, numpy out.
        ``task="query"`` for query embeddings of an asymmetric adaptor (``None`` / ``"document"``: documents)."""
        x = check_embeddings(embeddings, self.input_dim)
        if dim is not None:
            validate_dim(dim, self.input_dim, name="dim")
        check_task(task)
        param = self.linear.weight
        outs = [truncate_embeddings(self(chunk.to(param.device, param.dtype), task), dim, normalize)
                for chunk in x.split(batch_size)]
        out = torch.cat(outs)
        if isinstance(embeddings, np.ndarray):  # numpy has no bfloat16: a half-precision adaptor gives float32
            return (out.float() if out.dtype in (torch.float16, torch.bfloat16) else out).cpu().numpy()
        return out.to(embeddings.device)

    def fit_transform(self, embeddings, dim: int | None = None, **fit_kwargs):
        return self.fit(embeddings, **fit_kwargs).transform(embeddings, dim)

    # ---- persistence ------------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return {"adaptor_type": "matryoshka_residual_mlp", **self.init_kwargs()}

    def init_kwargs(self) -> dict:
        """The constructor's arguments (``asymmetric`` only when set, so older readers still load the rest)."""
        kwargs = {"input_dim": self.input_dim, "nesting_list": list(self.nesting_list), "hidden_dim": self.hidden_dim}
        if self.asymmetric:
            kwargs["asymmetric"] = True
        return kwargs

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``adaptor_config.json`` and ``adaptor.safetensors`` into ``save_directory``, committed as one set
        (``mrl_hf.saving.owned_files``): a killed save leaves the old pair or the new pair, never one of each."""
        owned_files = _needs_mrl_hf("saving an adaptor", "saving").owned_files
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with owned_files(save_directory, "adaptor") as staging:
            save_file(state, str(staging / ADAPTOR_WEIGHTS_NAME))
            (staging / ADAPTOR_CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "MatryoshkaAdaptor":
        config_path = os.path.join(directory, ADAPTOR_CONFIG_NAME)
        weights_path = os.path.join(directory, ADAPTOR_WEIGHTS_NAME)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{config_path} does not exist; save an adaptor there with save_pretrained().")
        with _needs_mrl_hf("loading an adaptor", "saving").reading(directory):
            try:
                config = json.loads(Path(config_path).read_text())
                if config.get("adaptor_type") != "matryoshka_residual_mlp":
                    raise ValueError(f"{config_path} has adaptor_type={config.get('adaptor_type')!r}; "
                                     "expected 'matryoshka_residual_mlp'.")
                adaptor = cls(config["input_dim"], config["nesting_list"], config["hidden_dim"],
                              bool(config.get("asymmetric", False)))
                state = load_file(weights_path)
            except (ValueError, KeyError, TypeError, OSError, SafetensorError) as exc:
                if isinstance(exc, ValueError) and "adaptor_type" in str(exc):
                    raise
                raise ValueError(f"the adaptor saved in {str(directory)!r} cannot be read ({type(exc).__name__}: "
                                 f"{exc}); it is damaged. Fit and save it again (saves are atomic, so a killed save "
                                 "does not cause this).") from exc
        try:
            adaptor.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{weights_path} does not fit {config_path} ({exc}); the two files are from different "
                             "adaptors. Save the adaptor again.") from exc
        return adaptor.eval()


TASKS = ("query", "document")


def check_task(task: str | None) -> str | None:
    """``task`` if it is ``None``, ``"query"`` or ``"document"`` (sentence-transformers' routes), else a ValueError."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; use 'query', 'document' or None (an asymmetric adaptor "
                         "takes None as 'document'; prompts take it as the default prompt).")
    return task


def _mean_direction(queries, dim: int) -> torch.Tensor:
    """The mean of the L2-normalised ``queries`` (checked first, so that bad input changes nothing)."""
    q = F.normalize(check_embeddings(queries, dim, "queries"), dim=-1)
    return q.double().mean(0).float()


def has_asymmetric_adaptor(model) -> bool:
    """Whether ``model`` (any object) carries an asymmetric ``MatryoshkaAdaptor`` as ``model.adaptor``."""
    return bool(getattr(getattr(model, "adaptor", None), "asymmetric", False))


def task_kwargs(model, task: str) -> dict:
    """``{"task": task}`` for ``model.encode`` when the model's adaptor is asymmetric or it has prompts
    (``config.prompts``), else ``{}`` (so any model with an ``encode`` works): evaluation code embeds queries with
    ``task="query"`` and documents with ``"document"``."""
    routed = has_asymmetric_adaptor(model) or bool(getattr(getattr(model, "config", None), "prompts", None))
    return {"task": check_task(task)} if routed else {}


def _row_groups(rows: torch.Tensor) -> list[int]:
    """For each row, the index of its group of identical rows."""
    return torch.unique(rows, dim=0, return_inverse=True)[1].tolist()


def distinct_pair_batch(groups: tuple[Sequence[int], Sequence[int]], batch_size: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Up to ``batch_size`` pair indices in random order, no two sharing a query group or a positive group
    (``groups``: each pair's query and positive group ids): in-batch InfoNCE would take a copy of a pair's own
    positive (or query) for a negative. A draw that leaves a single pair (its InfoNCE is 0, no gradient) is drawn
    again, up to 8 times."""
    query_groups, positive_groups = groups
    best: list[int] = []
    for _ in range(8):
        seen_q, seen_p, picked = set(), set(), []
        for i in torch.randperm(len(query_groups), generator=generator).tolist():
            if query_groups[i] in seen_q or positive_groups[i] in seen_p:
                continue
            seen_q.add(query_groups[i])
            seen_p.add(positive_groups[i])
            picked.append(i)
            if len(picked) == batch_size:
                break
        best = max(best, picked, key=len)
        if len(best) >= 2:
            break
    return torch.tensor(best)


def _needs_mrl_hf(what: str, module: str):
    """``mrl_hf.<module>``: the training and file tools this module uses, imported on use so that the remote-code
    copy of a model (which holds the adaptor's forward) carries only modeling code."""
    try:
        if module == "distillation":
            from mrl_hf import distillation as tools
        else:
            from mrl_hf import saving as tools
    except ImportError as exc:
        raise ImportError(f"{what} needs the mrl_hf package: pip install mrl-hf") from exc
    return tools


def pca_rotation(embeddings, nesting_list: Sequence[int] | None = None, center: bool = True,
                 queries=None) -> MatryoshkaAdaptor:
    """The training-free baseline: rotate embeddings onto their principal axes, largest variance first.

    Returns a ``MatryoshkaAdaptor`` without MLP, so it has the same ``transform``/``save_pretrained`` API.
    With ``center=False`` the map is a pure rotation and full-dim cosine similarities are unchanged.
    With ``queries`` it is asymmetric: the axes are the documents' (``embeddings``), queries centred on their own mean.
    """
    x = check_embeddings(embeddings)
    return MatryoshkaAdaptor(x.shape[1], nesting_list, hidden_dim=0).init_pca(x, center, queries).eval()


def mean_centering(embeddings, nesting_list: Sequence[int] | None = None) -> MatryoshkaAdaptor:
    """The mean of the (L2-normalised) ``embeddings`` subtracted, nothing rotated: for a model that is already
    Matryoshka, so every prefix keeps its features.

    The direction all vectors share no longer dominates the short prefixes' cosines, and each feature's sign bit splits
    the texts more evenly (a bit that is the same for most texts carries little): on the demo recipe, +7.6 points of
    hit@10 in float and +8.5 as binary codes at 12 dims (docs/quantization.md). Cosines at every size become those
    of the centred vectors. Fit it on the vectors of texts like the ones you will serve (no labels), ``attach_adaptor``
    it, and the model's ``encode(..., precision="binary")`` codes include it. A ``MatryoshkaAdaptor`` without MLP
    (``W = I``).
    """
    x = F.normalize(check_embeddings(embeddings), dim=-1)
    if x.shape[0] < 2:
        raise ValueError(f"embeddings has {x.shape[0]} row; a mean to subtract needs at least 2.")
    adaptor = MatryoshkaAdaptor(x.shape[1], nesting_list, hidden_dim=0)
    with torch.no_grad():
        adaptor.mean.copy_(x.double().mean(0).float())
    return adaptor.eval()


def attach_adaptor(model, adaptor: MatryoshkaAdaptor):
    """Make ``adaptor`` part of an mrl_hf embedding model (``MRLBertModel``): it runs after pooling, its weights
    are saved with ``model.save_pretrained`` and restored by ``from_pretrained(..., truncate_dim=64)``.

    The model's ``nesting_list`` becomes the adaptor's. ``adaptor`` itself becomes the model's module: it is moved to
    the model's device and dtype (``adaptor.transform`` still returns float32 numpy for numpy input). Returns
    ``model``.
    """
    config = getattr(model, "config", None)
    if not hasattr(model, "adaptor") or not hasattr(config, "adaptor") or not hasattr(config,
                                                                                   "matryoshka_embedding_dim"):
        raise TypeError(f"{type(model).__name__} has no adaptor slot; attach to an mrl_hf embedding model such as "
                        "MRLBertModel (or keep the adaptor separate and call adaptor.transform on its outputs).")
    if not isinstance(adaptor, MatryoshkaAdaptor):
        raise TypeError(f"adaptor must be a MatryoshkaAdaptor, got {type(adaptor).__name__}.")
    if adaptor.input_dim != config.matryoshka_embedding_dim:
        raise ValueError(f"the adaptor takes {adaptor.input_dim}-dim vectors but the model embeds to "
                         f"{config.matryoshka_embedding_dim}; fit the adaptor on this model's embeddings.")
    if getattr(model, "adaptor", None) is not None:
        raise ValueError("this model already has an adaptor; its embeddings are the adaptor's outputs. "
                         "Fit the new one on the base encoder (reload it without the adaptor).")
    trial = copy.deepcopy(config)  # checked on a copy first: a refused adaptor leaves the model as it was
    trial.adaptor, trial.nesting_list = adaptor.init_kwargs(), list(adaptor.nesting_list)
    trial.validate_matryoshka()
    param = next(model.parameters())
    model.adaptor = adaptor.to(param.device, param.dtype)
    config.adaptor = adaptor.init_kwargs()
    config.nesting_list = list(adaptor.nesting_list)
    config.validate_matryoshka()
    keep_default_size_trained(model)
    return model


def keep_default_size_trained(model) -> None:
    """A default size (``config.truncate_dim``) that a new ``nesting_list`` leaves out would be served but not
    trained (``mrl-hf inspect`` flags such a save, vLLM refuses it): the model then serves its full size by default,
    and says so."""
    default, dims = model.config.truncate_dim, list(model.config.nesting_list)
    if default is not None and default not in dims:
        model.config.truncate_dim = None
        warnings.warn(f"the model's default size truncate_dim={default} is not in nesting_list={dims}, so it "
                      "is not trained; the model now serves its full size by default (set "
                      "model.config.truncate_dim to one of the trained sizes).", UserWarning, stacklevel=3)
