"""Nesting lists: the set M of prefix sizes m at which a Matryoshka representation is trained."""
from __future__ import annotations

import operator
from typing import Iterable, Sequence


def halving_nesting_list(dim: int, min_dim: int = 8) -> list[int]:
    """The paper's lists: halve from ``dim`` (rounding down) while the result stays >= ``min_dim``.

    >>> halving_nesting_list(2048)
    [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    >>> halving_nesting_list(768)
    [12, 24, 48, 96, 192, 384, 768]
    """
    dim, min_dim = _check_positive_int(dim, "dim"), _check_positive_int(min_dim, "min_dim")
    if min_dim > dim:
        raise ValueError(f"min_dim={min_dim} is larger than dim={dim}; choose min_dim in 1..{dim}.")
    dims = []
    m = dim
    while m >= min_dim:
        dims.append(m)
        m //= 2
    return sorted(dims)


def uniform_nesting_list(dim: int, min_dim: int = 8, num: int = 11) -> list[int]:
    """Evenly spaced sizes from ``min_dim`` to ``dim`` (the paper's MRL-Uniform ablation).

    >>> uniform_nesting_list(2048)
    [8, 212, 416, 620, 824, 1028, 1232, 1436, 1640, 1844, 2048]
    """
    dim, min_dim = _check_positive_int(dim, "dim"), _check_positive_int(min_dim, "min_dim")
    num = _check_positive_int(num, "num")
    if min_dim > dim:
        raise ValueError(f"min_dim={min_dim} is larger than dim={dim}; choose min_dim in 1..{dim}.")
    if num == 1:
        return [dim]
    step = (dim - min_dim) / (num - 1)
    return sorted({round(min_dim + i * step) for i in range(num)})


def validate_nesting_list(nesting_list: Iterable[int], dim: int | None = None, name: str = "nesting_list") -> list[int]:
    """Return ``nesting_list`` as a list of ints, or raise ``ValueError`` saying what is wrong.

    A valid list is non-empty, strictly increasing, made of ints >= 1, and (when ``dim`` is given)
    ends with ``dim``: the last prefix is the whole embedding.
    """
    if isinstance(nesting_list, (str, bytes)) or not isinstance(nesting_list, Iterable):
        raise TypeError(f"{name} must be a list of ints such as [8, 16, 32], got {nesting_list!r}.")
    values = list(nesting_list)
    if not values:
        raise ValueError(f"{name} is empty; give at least one size, e.g. halving_nesting_list(dim).")
    values = [as_int(v, f"{name} entry (in {values})") for v in values]
    bad = [v for v in values if v < 1]
    if bad:
        raise ValueError(f"{name}={values} contains {bad[0]}; every size must be >= 1.")
    for a, b in zip(values, values[1:]):
        if b <= a:
            what = "a duplicate" if a == b else "out of order"
            raise ValueError(
                f"{name}={values} is not strictly increasing ({b} after {a} is {what}); "
                f"sort it and drop duplicates: {sorted(set(values))}."
            )
    if dim is not None and values[-1] != dim:
        raise ValueError(
            f"{name}={values} ends with {values[-1]}, but the embedding dim is {dim}; "
            f"the last size must equal the embedding dim (e.g. halving_nesting_list({dim}))."
        )
    return values


def interpolated_dims(nesting_list: Sequence[int]) -> list[int]:
    """Sizes half-way between neighbours of ``nesting_list`` that are not in it (the paper's MRL-Interpolated).

    >>> interpolated_dims([8, 16, 32, 64])
    [12, 24, 48]
    """
    values = validate_nesting_list(nesting_list)
    mids = {(a + b) // 2 for a, b in zip(values, values[1:])}
    return sorted(mids - set(values))


def validate_dim(dim: int, max_dim: int, name: str = "truncate_dim") -> int:
    """Check that ``dim`` is an int in 1..``max_dim`` and return it."""
    dim = as_int(dim, f"{name} (an int in 1..{max_dim}, or None for the full size)")
    if not 1 <= dim <= max_dim:
        raise ValueError(f"{name}={dim} is out of range; choose a value in 1..{max_dim} (or None for the full size).")
    return dim


def validate_dims(dims, max_dim: int) -> list[int]:
    """The sizes to evaluate at, each checked with ``validate_dim``; ``dims`` is required."""
    if dims is None:
        raise ValueError("dims is required: the embedding sizes to evaluate, e.g. model.config.nesting_list.")
    return [validate_dim(m, max_dim, name="dim") for m in dims]


def as_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int within [minimum, maximum]; numpy ints pass, bools and floats do not."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}.") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} is too small; it must be >= {minimum}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} is too large; it must be <= {maximum}.")
    return value


def _check_positive_int(value, name: str) -> int:
    """``value`` as a Python int (a tensor or numpy scalar would be changed in place by ``//=``), checked >= 1."""
    value = as_int(value, name)
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1.")
    return value


def validate_relative_importance(values, num_dims: int) -> list[float]:
    """The ``c_m`` weights: one non-negative float per nesting dim, not all zero."""
    if values is None:
        return [1.0] * num_dims
    values = [float(v) for v in values]
    if len(values) != num_dims:
        raise ValueError(
            f"relative_importance has {len(values)} entries {values}, but nesting_list has {num_dims} sizes; "
            "give one weight per size (or None for all ones)."
        )
    bad = [v for v in values if not v >= 0]  # also catches NaN
    if bad:
        raise ValueError(f"relative_importance={values} contains {bad[0]}; every weight must be >= 0.")
    if sum(values) == 0:
        raise ValueError(f"relative_importance={values} is all zeros; at least one weight must be > 0.")
    return values
