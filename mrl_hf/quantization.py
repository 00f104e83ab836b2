"""Quantisation-aware Matryoshka: train each prefix for the codes it is served as, and produce those codes.

A deployment often keeps a Matryoshka prefix as int8 or binary codes (and re-scores a shortlist in float). A model
trained for float prefixes only loses much when a short prefix is binarised afterwards. With ``precisions`` the
nested loss also scores each listed prefix *as it will be quantised*:

- ``"binary"``: one sign bit per feature (``x > 0``), compared by Hamming distance. For codes ``b`` in {-1, +1},
  ``cos(b_q, b_d) = 1 - 2 * hamming / m``, so the loss ranks exactly as a Hamming search does. The sign has no
  gradient; ``binary_surrogate="ste"`` (default) uses the exact codes in the forward pass and gradient 1 in the
  backward pass (straight-through); ``"tanh"`` uses ``tanh(x / (tau * rms(x)))`` in both (a smooth surrogate).
- ``"int8"``: each prefix is L2-normalised, then quantised to 256 levels per feature with ranges calibrated on the
  batch (the min and max of each feature), dequantised and compared by cosine; straight-through gradient.

``precisions`` is a list (``["float32", "binary"]``: every listed precision at every size of ``nesting_list``) or a
mapping ``{"binary": [12, 24, 48]}`` (a precision at chosen sizes). ``float32`` is always trained at every size (the
plain nested loss). The canonical form, ``{precision: sizes}``, is written into ``config.json`` as
``matryoshka_precisions`` and into the model card, so serving code knows which (size, precision) pairs were trained.

Codes follow sentence-transformers' ``quantize_embeddings`` exactly: ``"binary"`` = ``np.packbits(x > 0) - 128`` as
int8, ``"ubinary"`` = ``np.packbits(x > 0)`` as uint8 (what FAISS ``IndexBinaryFlat`` and mrl_hf's
``SearchPlan(precision="binary")`` search), ``"int8"`` / ``"uint8"`` = ``floor((x - min) / ((max - min) / 255))``
clipped to 0..255 (minus 128 for int8), with per-feature ``ranges`` of shape ``(2, dim)``.

This module imports only numpy and torch: the models' remote code copies it.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .embeddings import inner_products
from .nesting import validate_dims, validate_nesting_list

FLOAT = "float32"
TRAINABLE_PRECISIONS = ("float32", "int8", "binary")  # what a loss can train
CODE_PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")  # what encode returns (sentence-transformers')
TRAINED_AS = {"float32": "float32", "int8": "int8", "uint8": "int8", "binary": "binary", "ubinary": "binary"}
BINARY_SURROGATES = ("ste", "tanh", "ste-centred")


# ---- which (size, precision) pairs are trained -------------------------------------------------------------------

def _check_trainable(name, where: str) -> str:
    if name not in TRAINABLE_PRECISIONS:
        hint = (f" (train {TRAINED_AS[name]!r}: the {name} codes are the same bits / levels)"
                if name in TRAINED_AS else "")
        raise ValueError(f"{where} has the precision {name!r}, which cannot be trained{hint}; choose from "
                         f"{list(TRAINABLE_PRECISIONS)}.")
    return name


def resolve_precisions(precisions, nesting_list: Sequence[int]) -> dict[str, list[int]]:
    """``precisions`` (None, a list of names, or ``{name: sizes}``) as ``{precision: sizes}``, float32 first.

    ``float32`` is always trained at every size of ``nesting_list``. Raises ``ValueError`` naming an unknown
    precision (and the allowed ones) or a size that is not in ``nesting_list``.
    """
    dims = validate_nesting_list(nesting_list)
    if precisions is None:
        return {FLOAT: list(dims)}
    if isinstance(precisions, str):
        precisions = [precisions]
    chosen: dict[str, list[int]] = {}
    if isinstance(precisions, Mapping):
        for name, sizes in precisions.items():
            _check_trainable(name, f"precisions={dict(precisions)!r}")
            if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes:
                raise ValueError(f"precisions[{name!r}]={sizes!r} must be a non-empty list of sizes from "
                                 f"nesting_list={dims}, e.g. {dims[:2]}.")
            bad = [m for m in sizes if isinstance(m, bool) or m not in dims]
            if bad:
                raise ValueError(f"precisions[{name!r}] lists the size {bad[0]!r}, which is not in "
                                 f"nesting_list={dims}; a precision can only be trained at a nesting size (loading a "
                                 "checkpoint with another nesting_list: pass precisions=None or sizes from the new "
                                 "list; mrl-hf train: --precisions float32, or --precision-sizes from "
                                 "--nesting-list).")
            chosen[name] = sorted({int(m) for m in sizes})
        if FLOAT in chosen and chosen[FLOAT] != dims:
            raise ValueError(f"precisions[{FLOAT!r}]={chosen[FLOAT]}, but the float32 nested loss trains every size of "
                             f"nesting_list={dims}; leave {FLOAT!r} out of the mapping (it is always trained).")
    elif isinstance(precisions, Sequence):
        for name in precisions:
            chosen[_check_trainable(name, f"precisions={list(precisions)!r}")] = list(dims)
    else:
        raise TypeError(f"precisions must be a list of names such as ['float32', 'binary'] or a mapping such as "
                        f"{{'binary': [{dims[0]}]}}, got {type(precisions).__name__} ({precisions!r}).")
    return {name: list(dims) if name == FLOAT else chosen[name]
            for name in TRAINABLE_PRECISIONS if name == FLOAT or name in chosen}


def quantized_terms(precisions, nesting_list: Sequence[int]) -> list[tuple[str, list[int]]]:
    """The ``(precision, sizes)`` pairs beyond float32 that a loss adds: ``[]`` for a float-only model."""
    return [(name, sizes) for name, sizes in resolve_precisions(precisions, nesting_list).items() if name != FLOAT]


def check_quantization_options(weight, surrogate: str) -> tuple[float, str]:
    """``(quantization_weight, binary_surrogate)`` checked: a weight >= 0 and a known surrogate."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"quantization_weight={weight!r} must be a number >= 0 (1.0 weighs each quantised term like "
                         "its float term).")
    if surrogate not in BINARY_SURROGATES:
        raise ValueError(f"binary_surrogate={surrogate!r} is not supported; choose one of {list(BINARY_SURROGATES)}.")
    return float(weight), surrogate


def check_code_precision(precision) -> str:
    if precision not in CODE_PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {list(CODE_PRECISIONS)} (the "
                         "precisions of sentence-transformers' quantize_embeddings).")
    return precision


def warn_if_untrained(trained: Mapping[str, Sequence[int]] | None, dim: int, precision: str) -> bool:
    """Warn (and return True) when ``precision`` codes at size ``dim`` are asked of a model not trained for them.

    ``trained`` is ``config.matryoshka_precisions`` (``{precision: sizes}``); float32 codes are never warned about.
    """
    family = TRAINED_AS[check_code_precision(precision)]
    if family == FLOAT or trained is None or dim in trained.get(family, ()):
        return False
    pairs = "; ".join(f"{name} at {list(sizes)}" for name, sizes in trained.items())
    if dim in trained.get(FLOAT, ()):
        fix = f"train with precisions={{'{family}': [{dim}]}} (mrl_hf.quantization)"
    else:  # codes are trained at nesting sizes only
        fix = f"add {dim} to nesting_list and train with precisions={{'{family}': [{dim}]}}, or cut to a trained size"
    warnings.warn(f"{precision} codes at size {dim} were not trained (the model was trained for {pairs}); expect "
                  f"lower quality than float32, or {fix}.", UserWarning, stacklevel=4)
    return True


# ---- training surrogates -----------------------------------------------------------------------------------------

def binary_codes(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x > 0``, else -1 (the bit sentence-transformers packs), in ``x``'s dtype."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


def binary_surrogate(x: torch.Tensor, mode: str = "ste", temperature: float = 0.5) -> torch.Tensor:
    """A differentiable stand-in for ``binary_codes(x)``, elementwise on ``(N, d)`` rows.

    ``"ste"``: exactly the codes in the forward pass (the loss is the one of the served codes), gradient 1 in the
    backward pass (the straight-through estimator). ``"tanh"``: ``tanh(x / (temperature * rms))`` in both passes,
    ``rms`` each row's root-mean-square (held fixed), so it does not depend on the embedding's scale; it tends to the
    codes as ``temperature`` -> 0. Both are elementwise (with a per-row scale), so the surrogate of a prefix is the
    prefix of the surrogate. (``"ste-centred"``, a loss setting, is ``"ste"`` on ``batch_centred`` rows: see
    ``quantized_similarities``.)
    """
    if mode == "ste":
        return x + (binary_codes(x) - x).detach()
    if mode == "tanh":
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 for the tanh surrogate.")
        rms = x.detach().square().mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        return torch.tanh(x / (temperature * rms))
    raise ValueError(f"binary_surrogate={mode!r} is not supported; choose one of {list(BINARY_SURROGATES)}.")


def batch_centred(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` L2-normalised, minus the mean of all their normalised rows (no gradient through the mean).

    The training counterpart of ``mrl_hf.adaptor.mean_centering``: a feature whose sign is the same for nearly
    every text carries no bit, and InfoNCE on such codes cannot see it (it shifts a whole row of logits). Codes of
    centred rows split the batch, so the loss trains the bits that centred serving will store."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    mean = torch.cat([a, b]).mean(0).detach()
    return a - mean, b - mean


def calibration_ranges(x: torch.Tensor) -> torch.Tensor:
    """Per-feature ``(2, d)`` min and max over the rows of ``x`` (no gradient), as sentence-transformers calibrates."""
    x = x.detach()
    return torch.stack([x.min(0).values, x.max(0).values])


def fake_quantize_int8(x: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """``x`` quantised to 256 levels per feature with ``ranges`` (sentence-transformers' rule) and dequantised;
    the gradient passes straight through."""
    start = ranges[0]
    step = (ranges[1] - start) / 255
    step = torch.where(step == 0, torch.ones_like(step), step)
    levels = torch.floor((x.detach() - start) / step).clamp(0, 255)
    return x + (levels * step + start - x).detach()


def quantized_similarities(a: torch.Tensor, b: torch.Tensor, sizes: Sequence[int], precision: str,
                           binary_surrogate_mode: str = "ste", binary_temperature: float = 0.5) -> torch.Tensor:
    """Cosine similarities ``(len(sizes), len(a), len(b))`` of each size's prefixes as ``precision`` codes, through
    the training surrogate. ``binary``: the cosine of +-1 codes, ``1 - 2 * hamming / m`` (``"ste-centred"``: codes of
    the ``batch_centred`` rows, for models served with ``mean_centering``); ``int8``: each prefix normalised,
    quantised with ranges calibrated on ``a`` and ``b`` together, dequantised."""
    from .losses import nested_cosine_similarities  # losses imports this module

    sizes = validate_nesting_list(sizes)
    ctype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(ctype), b.to(ctype)
    if precision == "binary":  # the surrogate's scale is each full row's, whichever sizes are listed
        if binary_surrogate_mode == "ste-centred":
            a, b = batch_centred(a, b)
            binary_surrogate_mode = "ste"
        sa = binary_surrogate(a, binary_surrogate_mode, binary_temperature)[:, : sizes[-1]]
        sb = binary_surrogate(b, binary_surrogate_mode, binary_temperature)[:, : sizes[-1]]
        return nested_cosine_similarities(sa, sb, sizes)
    if precision == "int8":
        a, b = a[:, : sizes[-1]], b[:, : sizes[-1]]
        out = []
        for m in sizes:
            pa, pb = F.normalize(a[:, :m], dim=-1), F.normalize(b[:, :m], dim=-1)
            ranges = calibration_ranges(torch.cat([pa, pb]))
            qa, qb = fake_quantize_int8(pa, ranges), fake_quantize_int8(pb, ranges)
            out.append(F.normalize(qa, dim=-1) @ F.normalize(qb, dim=-1).T)
        return torch.stack(out)
    raise ValueError(f"precision={precision!r} has no training surrogate; choose 'binary' or 'int8'.")


def add_quantized_terms(per_dim: torch.Tensor, nesting_list: Sequence[int], precisions, weight: float,
                        term) -> torch.Tensor:
    """``per_dim`` (one loss per nesting size) plus ``weight * term(precision, sizes)`` at each quantised
    precision's sizes; ``term`` returns one loss per size. ``per_dim`` itself when nothing is quantised."""
    terms = quantized_terms(precisions, nesting_list)
    if not terms:
        return per_dim
    if not weight >= 0:
        raise ValueError(f"quantization_weight={weight} must be >= 0.")
    dims = list(nesting_list)
    for name, sizes in terms:
        values = term(name, sizes)
        index = torch.tensor([dims.index(m) for m in sizes], device=per_dim.device)
        per_dim = per_dim.index_add(0, index, weight * values.to(per_dim.dtype))
    return per_dim


# ---- codes (sentence-transformers' conventions) -----------------------------------------------------------------

def _as_numpy(x) -> np.ndarray:
    """``x`` (a numpy array, a list or a torch tensor on any device, in any dtype) as a numpy array in the same dtype;
    bfloat16, which numpy lacks, becomes float32 (as in sentence-transformers: float64 keeps its precision)."""
    if isinstance(x, (list, tuple)) and x and all(isinstance(row, torch.Tensor) for row in x):
        x = torch.stack([row.detach().cpu() for row in x])
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _code_bytes(codes, name: str) -> np.ndarray:
    """Packed binary codes as their uint8 bytes. Codes held in a wider integer type (a list, JSON, ``.long()``) are
    converted by value, not reinterpreted: a view of an int64 -3 would count its sign-extension bytes as bits."""
    codes = _as_numpy(codes)
    if codes.dtype in (np.uint8, np.int8):
        return np.ascontiguousarray(codes).view(np.uint8)
    _check_integer_codes(codes, -128, 255, f"{name} (packed binary codes: int8 'binary' or uint8 'ubinary' bytes, "
                         "as quantize_embeddings returns them)")
    return (codes.astype(np.int64) & 0xFF).astype(np.uint8)


def _check_binary_kind(codes, precision: str | None, name: str) -> str | None:
    """The binary precision that ``codes``' dtype says (int8: ``"binary"``, uint8: ``"ubinary"``; None for codes held
    in another integer type), refusing a ``precision`` that contradicts it: ``"binary"`` bytes are the packed bits
    minus 128, so reading one kind as the other flips every byte's top bit."""
    dtype = _as_numpy(codes).dtype
    kind = {np.dtype(np.int8): "binary", np.dtype(np.uint8): "ubinary"}.get(dtype)
    if precision is not None and kind is not None and precision != kind:
        raise ValueError(f"{name} are {dtype} ({kind!r} codes) but precision={precision!r}; pass "
                         f"precision={kind!r}, or quantise both sides with the same precision.")
    return kind


def _check_integer_codes(codes: np.ndarray, low: int, high: int, what: str) -> None:
    if codes.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers in {low}..{high}, got {codes.dtype}.")
    if codes.size and (codes.min() < low or codes.max() > high):
        raise ValueError(f"{what} must be integers in {low}..{high}, got values in {codes.min()}..{codes.max()}.")


def quantization_ranges(calibration_embeddings) -> np.ndarray:
    """``(2, dim)``: the min and max of each feature over ``calibration_embeddings``, as sentence-transformers takes."""
    x = _as_numpy(calibration_embeddings)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"calibration embeddings must be 2-D with at least one row, got shape {x.shape}.")
    return np.vstack((np.min(x, axis=0), np.max(x, axis=0)))


def quantize_embeddings(embeddings, precision: str, ranges=None, calibration_embeddings=None) -> np.ndarray:
    """The codes of sentence-transformers' ``quantize_embeddings`` (same dtypes, same values), in numpy.

    ``ranges`` ``(2, dim)`` (min, max per feature) or ``calibration_embeddings`` set the int8 / uint8 levels;
    without either, they come from ``embeddings`` themselves (which needs more than one row).
    """
    check_code_precision(precision)
    embeddings = _as_numpy(embeddings)
    if embeddings.dtype in (np.uint8, np.int8):
        raise ValueError(f"embeddings are already {embeddings.dtype} codes; quantise float embeddings.")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision.endswith("int8"):
        if ranges is None and calibration_embeddings is None and embeddings.ndim == 2 and embeddings.shape[0] == 0:
            return np.zeros(embeddings.shape, np.uint8 if precision == "uint8" else np.int8)
        if ranges is None:
            if calibration_embeddings is None and (embeddings.ndim == 1 or embeddings.shape[0] == 1):
                raise ValueError(f"cannot calibrate {precision} ranges on a single embedding; pass ranges= (2, dim) or "
                                 "calibration_embeddings= (a representative set, e.g. the corpus).")
            ranges = quantization_ranges(embeddings if calibration_embeddings is None else calibration_embeddings)
        ranges = _as_numpy(ranges).astype(np.float32, copy=False)
        if ranges.shape != (2, embeddings.shape[-1]):
            raise ValueError(f"ranges has shape {ranges.shape}; expected (2, {embeddings.shape[-1]}): the min and max "
                             "of each feature, at the size being quantised.")
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        levels = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return levels.astype(np.uint8) if precision == "uint8" else (levels - 128).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1)
    return packed if precision == "ubinary" else (packed - 128).astype(np.int8)


def dequantize_embeddings(codes, ranges, precision: str | None = None) -> np.ndarray:
    """int8 / uint8 codes back to floats (sentence-transformers' rescoring rule: ``level * step + min``). The codes'
    dtype says which they are; codes held in another integer type (a list, ``.long()``) need ``precision``."""
    codes = _as_numpy(codes)
    if precision is None:
        if codes.dtype not in (np.int8, np.uint8):
            raise ValueError(f"codes are {codes.dtype}, so whether they are int8 (levels - 128) or uint8 codes is "
                             "not known; pass precision='int8' or 'uint8', or the int8 / uint8 arrays themselves.")
        precision = "int8" if codes.dtype == np.int8 else "uint8"
    if precision not in ("int8", "uint8"):
        raise ValueError(f"precision={precision!r}; dequantize_embeddings takes 'int8' or 'uint8' codes.")
    _check_integer_codes(codes, *((-128, 127) if precision == "int8" else (0, 255)), f"{precision} codes")
    ranges = _as_numpy(ranges).astype(np.float32, copy=False)
    if ranges.shape != (2, codes.shape[-1]):
        raise ValueError(f"ranges has shape {ranges.shape}; expected (2, {codes.shape[-1]}): the min and max of each "
                         "feature the codes were quantised with.")
    steps = (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    levels = codes.astype(np.float64) + (128 if precision == "int8" else 0)
    return levels * steps + ranges[0]


_POPCOUNT = torch.tensor([i.bit_count() for i in range(256)], dtype=torch.int32)


def hamming_distances(query_codes, corpus_codes) -> torch.Tensor:
    """``(n_queries, n_corpus)`` Hamming distances between packed binary codes (``"binary"`` or ``"ubinary"``:
    the -128 offset of ``"binary"`` flips the same bit on both sides, so both give the same distances)."""
    _check_binary_kind(corpus_codes, _check_binary_kind(query_codes, None, "query codes"), "corpus codes")
    q = torch.as_tensor(_code_bytes(query_codes, "query codes"))
    c = torch.as_tensor(_code_bytes(corpus_codes, "corpus codes"))
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"binary codes must be 2-D with the same number of bytes, got {tuple(q.shape)} and "
                         f"{tuple(c.shape)}.")
    out = torch.empty(q.shape[0], c.shape[0], dtype=torch.int32)
    chunk = max(1, 2**21 // max(1, c.shape[0] * c.shape[1]))  # queries per pass: ~16 MiB of int64 lookups
    for s in range(0, q.shape[0], chunk):
        out[s:s + chunk] = _POPCOUNT[(q[s:s + chunk, None, :] ^ c[None, :, :]).long()].sum(-1)
    return out


def asymmetric_binary_scores(queries, corpus_codes, precision: str | None = None) -> torch.Tensor:
    """``(n_queries, n_corpus)`` inner products of float ``queries`` with the +-1 vectors that packed binary corpus
    codes stand for: the corpus is stored as bits, the query is not binarised (asymmetric scoring, as in Qdrant's
    binary quantization with a float query). ``queries`` are the same prefix as the codes (``dim`` features in
    ``ceil(dim / 8)`` bytes, as ``quantize_embeddings`` packs them), normalised or not (the ranking per query is the
    same). The codes' dtype says ``"binary"`` (int8) or ``"ubinary"`` (uint8); codes held in another integer type
    need ``precision``."""
    kind = _check_binary_kind(corpus_codes, precision, "corpus codes")
    precision = precision or kind
    if precision not in ("binary", "ubinary"):
        raise ValueError(f"corpus codes are {_as_numpy(corpus_codes).dtype}, so whether they are 'binary' (int8) or "
                         "'ubinary' (uint8) codes is not known; pass precision='binary' or 'ubinary'."
                         if precision is None else f"precision={precision!r}; binary codes are 'binary' or 'ubinary'.")
    q = _as_numpy(queries).astype(np.float64)
    codes = _code_bytes(corpus_codes, "corpus codes")
    if precision == "binary":  # sentence-transformers' int8 "binary" codes are the packed bytes minus 128
        codes = codes ^ np.uint8(128)
    if q.ndim != 2 or codes.ndim != 2 or -(-q.shape[1] // 8) != codes.shape[1]:
        raise ValueError(f"queries {q.shape} must be 2-D with as many features as the codes {codes.shape} hold (8 "
                         f"per byte, the last byte zero-padded): cut the float queries to the codes' size "
                         f"({8 * codes.shape[-1] - 7}-{8 * codes.shape[-1]} dims).")
    signs = np.unpackbits(codes, axis=1, count=q.shape[1]).astype(np.float64) * 2 - 1
    return torch.as_tensor(inner_products(q, signs))


def search_codes(query_codes, corpus_codes, precision: str, top_k: int = 10, ranges=None):
    """Exact search of ``corpus_codes`` with ``query_codes`` (both from ``encode(..., precision=...)`` or
    ``quantize_embeddings``): ``(scores, ids)`` ``(n_queries, top_k)``, best first, ties by corpus order.

    Binary codes rank by Hamming distance (score ``-hamming``), or, given float queries (the query's prefix, not
    coded), by ``asymmetric_binary_scores``; int8 / uint8 codes by the inner product of their dequantised values
    (pass the ``ranges`` they were made with); float32 by inner product.
    For large corpora, the same codes go straight into FAISS (``IndexBinaryFlat`` for ``"ubinary"``) or
    ``sentence_transformers.quantization.semantic_search_faiss``.
    """
    check_code_precision(precision)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be an int >= 1.")
    query_codes = _as_numpy(query_codes)
    if query_codes.ndim == 1:  # one query, as encode("a text", precision=...) gives it
        query_codes = query_codes[None, :]
    if query_codes.dtype.kind == "f" and not np.isfinite(query_codes).all():
        raise ValueError("the queries contain NaN or inf; a NaN score would rank arbitrarily. Check the embeddings.")
    scores = _code_scores(query_codes, corpus_codes, precision, ranges)
    top_k = min(int(top_k), scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top_k]
    return scores.gather(1, order).numpy(), order.numpy()


def _code_scores(query_codes, corpus_codes, precision: str, ranges=None) -> torch.Tensor:
    if precision in ("binary", "ubinary") and _as_numpy(query_codes).dtype.kind == "f":
        return asymmetric_binary_scores(query_codes, corpus_codes, precision)
    if precision in ("binary", "ubinary"):
        _check_binary_kind(query_codes, precision, "query codes")
        _check_binary_kind(corpus_codes, precision, "corpus codes")
        return -hamming_distances(query_codes, corpus_codes).float()
    if precision in ("int8", "uint8"):
        if ranges is None:
            raise ValueError(f"{precision} codes are scored on their dequantised values: pass the ranges they were "
                             "quantised with (quantization_ranges(calibration_embeddings)).")
        query_codes = dequantize_embeddings(query_codes, ranges, precision)
        corpus_codes = dequantize_embeddings(corpus_codes, ranges, precision)
    q, c = _as_numpy(query_codes).astype(np.float64), _as_numpy(corpus_codes).astype(np.float64)
    return torch.as_tensor(inner_products(q, c))


# ---- evaluation: one table per (size, precision) ----------------------------------------------------------------

def quantized_retrieval_metrics(query_embeddings, candidate_embeddings, dims: Sequence[int],
                                precisions: Sequence[str] = ("float32", "int8", "binary"), relevant=None,
                                ks: Sequence[int] = (1, 10), rescore: bool = False, rescore_k: int = 100,
                                calibration_embeddings=None, asymmetric: bool = False, ties: str = "against"
                                ) -> dict[str, dict[int, dict[str, float]]]:
    """Query -> candidate retrieval at every ``(size, precision)``: ``{label: {m: {"hit@k": .., "mrr": ..}}}``.

    At size ``m`` each side is cut to ``m`` features and L2-normalised, then coded: float32 ranks by cosine, binary
    by Hamming distance of the packed sign bits, int8 by the inner product of dequantised codes with ranges
    calibrated on ``calibration_embeddings`` (default: the candidates). By default (``ties="against"``) a
    non-relevant candidate with the same score as the best relevant one ranks above it, so a short binary code is not
    credited with a tie (and the candidates' order does not matter); ``ties="random"`` gives the expectation when tied
    candidates come in random order (what an engine that breaks ties by corpus position gives on average over corpus
    orders). With ``rescore``, labels
    ``"<precision>+rescore"`` are added: the ``rescore_k`` best by codes are re-ranked by float32 cosine at the full
    size; a relevant candidate outside that shortlist is a miss (a tie at the shortlist's edge counts against it
    under either ``ties``). With ``asymmetric``, each binary precision adds
    ``"<precision>-asymmetric"``: binary candidate codes scored with the float query (``asymmetric_binary_scores``).
    Values are fractions in [0, 1].
    """
    try:  # an evaluation tool: imported by absolute name, so the models' remote code does not copy it
        from mrl_hf.embeddings import _check_finite
        from mrl_hf.evaluation.pairs import _relevance_mask, check_ties, rank_metrics
    except ImportError:
        raise ImportError("quantized_retrieval_metrics needs the mrl_hf package: pip install mrl-hf") from None

    q = np.asarray(query_embeddings, dtype=np.float32)
    c = np.asarray(candidate_embeddings, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"query and candidate embeddings must be 2-D with the same size, got {q.shape} and {c.shape}.")
    if len(q) == 0 or len(c) == 0:
        raise ValueError("need at least one query and one candidate.")
    _check_finite(torch.from_numpy(q), "query_embeddings")  # a NaN score would rank first and count as a hit
    _check_finite(torch.from_numpy(c), "candidate_embeddings")
    for p in precisions:
        check_code_precision(p)
    check_ties(ties)
    relevance = _relevance_mask(relevant, len(q), len(c))
    calib = c if calibration_embeddings is None else np.asarray(calibration_embeddings, dtype=np.float32)
    full = _cosine(q, c, q.shape[1]) if rescore else None
    results: dict[str, dict[int, dict[str, float]]] = {}
    for m in validate_dims(dims, q.shape[1]):
        qm, cm = _normalized(q[:, :m]), _normalized(c[:, :m])
        for p in precisions:
            if p == FLOAT:
                scores = torch.as_tensor(inner_products(qm, cm), dtype=torch.float64)
            else:
                ranges = quantization_ranges(_normalized(calib[:, :m])) if p.endswith("int8") else None
                scores = _code_scores(quantize_embeddings(qm, p, ranges), quantize_embeddings(cm, p, ranges), p, ranges)
            results.setdefault(p, {})[int(m)] = rank_metrics(scores, relevance, ks, ties)
            if asymmetric and p.endswith("binary"):
                results.setdefault(f"{p}-asymmetric", {})[int(m)] = rank_metrics(
                    asymmetric_binary_scores(qm, quantize_embeddings(cm, p), p), relevance, ks, ties)
            if rescore and p != FLOAT:
                results.setdefault(f"{p}+rescore", {})[int(m)] = rank_metrics(
                    _rescored(scores, full, rescore_k, relevance), relevance, ks, ties)
    return results


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cosine(q: np.ndarray, c: np.ndarray, m: int) -> torch.Tensor:
    return torch.as_tensor(inner_products(_normalized(q[:, :m]), _normalized(c[:, :m])), dtype=torch.float64)


def _rescored(code_scores: torch.Tensor, float_scores: torch.Tensor, k: int, relevance: torch.Tensor) -> torch.Tensor:
    """Float scores on each query's ``k`` best by code, -inf elsewhere. A candidate tied by code with a relevant one
    takes the shortlist's place first, so that, as in the codes' own ranks, a tie counts against the relevant one
    and the candidates' order does not matter."""
    k = min(int(k), code_scores.shape[1])
    relevant_last = torch.sort(relevance.to(torch.int8), dim=1, stable=True).indices
    by_code = torch.sort(code_scores.gather(1, relevant_last), dim=1, descending=True, stable=True).indices[:, :k]
    shortlist = relevant_last.gather(1, by_code)
    out = torch.full_like(float_scores, float("-inf"))
    return out.scatter(1, shortlist, float_scores.gather(1, shortlist))


def format_precision_table(results: Mapping[str, Mapping[int, Mapping[str, float]]],
                           metrics: Sequence[str] = ("hit@10", "mrr")) -> str:
    """Markdown: one row per size, one column per (precision, metric), in percent."""
    labels = list(results)
    dims = sorted({m for per_dim in results.values() for m in per_dim})
    header = "| dim | " + " | ".join(f"{label} {metric.replace('mrr', 'MRR')}" for label in labels
                                      for metric in metrics) + " |"
    lines = [header, "|" + "---|" * (1 + len(labels) * len(metrics))]
    for m in dims:
        cells = [f"{100 * results[label][m][metric]:.1f}" if m in results[label] else "-"
                 for label in labels for metric in metrics]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
