"""The Matryoshka contract of a checkpoint: the sizes it was trained at, its default size and how to normalise.

``contract_keys`` gives the keys mrl_hf writes into ``config.json`` (every way out: ``save_pretrained``,
``save_for_hub``, ``push_to_hub``, remote code, the sentence-transformers export); ``sentence_transformers_keys`` the
ones of ``config_sentence_transformers.json``. ``inspect_checkpoint`` reads any checkpoint (mrl_hf,
sentence-transformers, plain transformers with vLLM or Jina keys) and reports what each tool will do with it.
docs/contract.md says which tool reads which key. This module imports neither torch nor transformers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

NORMALIZATION = "slice, then L2-normalise the slice"
_VLLM_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")  # the sentence-transformers modules vLLM rebuilds


def contract_keys(config) -> dict:
    """The keys of ``config.json`` that carry the contract of an mrl_hf config.

    ``nesting_list`` (mrl_hf), ``matryoshka_dimensions`` (vLLM, SGLang, Jina), ``is_matryoshka`` (vLLM),
    ``truncate_dim`` (the default size; ``None`` = full) and ``normalize_embeddings`` (whether ``encode`` normalises
    by default; it always normalises *after* slicing) and ``matryoshka_precisions`` (the ``{precision: sizes}`` pairs
    the model was trained for: float32 at every size, plus any quantisation-aware ``int8`` / ``binary`` sizes).
    """
    dims = [int(d) for d in config.nesting_list]
    precisions = getattr(config, "matryoshka_precisions", None) or {"float32": list(dims)}
    return {"nesting_list": dims, "matryoshka_dimensions": list(dims), "is_matryoshka": True,
            "truncate_dim": config.truncate_dim, "normalize_embeddings": bool(config.normalize_embeddings),
            "matryoshka_precisions": {name: [int(m) for m in sizes] for name, sizes in precisions.items()}}


def sentence_transformers_keys(config) -> dict:
    """The contract's keys in ``config_sentence_transformers.json``: the default size (sentence-transformers >= 5.4
    applies ``truncate_dim``) and cosine similarity, which is the same for a slice and its normalised slice."""
    return {"similarity_fn_name": "cosine", "truncate_dim": config.truncate_dim}


@dataclass
class Problem:
    """Something that makes a tool misbehave with the checkpoint, and what to do about it."""

    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}"


@dataclass
class CheckpointReport:
    """What ``inspect_checkpoint`` found. ``dims`` is None when no key lists the sizes; ``keys`` holds the
    Matryoshka keys found, by file."""

    source: str
    kind: str
    dims: list[int] | None
    default_dim: int | None
    full_dim: int | None
    normalization: str
    keys: dict[str, dict] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    precisions: dict[str, list[int]] | None = None  # the trained (precision: sizes), when config.json lists them

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"source": self.source, "kind": self.kind, "dims": self.dims, "default_dim": self.default_dim,
                "full_dim": self.full_dim, "normalization": self.normalization, "precisions": self.precisions,
                "keys": self.keys,
                "problems": [{"message": p.message, "fix": p.fix} for p in self.problems]}

    def __str__(self) -> str:
        default = self.default_dim if self.default_dim is not None else f"full size ({self.full_dim or '?'})"
        lines = [f"{self.source}: {self.kind} checkpoint",
                 f"  sizes:          {self.dims if self.dims is not None else 'none listed'}",
                 f"  default size:   {default}",
                 f"  full size:      {self.full_dim if self.full_dim is not None else 'unknown'}",
                 f"  normalisation:  {self.normalization}"]
        if self.precisions is not None:
            pairs = "; ".join(f"{name} at {sizes}" for name, sizes in self.precisions.items())
            lines.append(f"  precisions:     {pairs}")
        for name, found in self.keys.items():
            lines.append(f"  {name}: " + ", ".join(f"{k}={v!r}" for k, v in found.items()))
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p.message}\n    fix: {p.fix}" for p in self.problems]
        else:
            lines.append("No problems: every tool reads the same sizes and default size.")
        return "\n".join(lines)


class _Files:
    """Reads the small JSON files of a local folder or a Hub repo; a missing file reads as None."""

    def __init__(self, source: str, revision: str | None, token):
        self.source, self.revision, self.token = source, revision, token
        self.local = Path(source).is_dir()
        if not self.local and _looks_like_path(source):
            raise FileNotFoundError(f"{source!r} does not exist; pass a checkpoint folder or a Hub model id.")

    def json(self, name: str):
        if self.local:
            path = Path(self.source) / name
            text = path.read_text(encoding="utf8") if path.is_file() else None
        else:
            text = self._download(name)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} of {self.source!r} is not valid JSON ({exc}); fix or re-save the file.") from exc

    def _download(self, name: str) -> str | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            path = hf_hub_download(self.source, name, revision=self.revision, token=self.token)
        except LocalEntryNotFoundError as exc:  # offline, or the Hub unreachable, and not in the local cache
            raise FileNotFoundError(f"{self.source!r} is not a folder, and its {name} could not be fetched from the "
                                    f"Hub or the cache ({exc}); check the path, or go online (HF_HUB_OFFLINE).") from exc
        except EntryNotFoundError:
            return None
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise FileNotFoundError(f"{self.source!r} is neither a folder nor a Hub model the token can read "
                                    f"({type(exc).__name__}); check the id, the revision and the token.") from exc
        return Path(path).read_text(encoding="utf8")


def _looks_like_path(text: str) -> bool:  # Hub ids are "name" or "owner/name"
    return os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text


def inspect_checkpoint(source: str | os.PathLike, revision: str | None = None, token=None) -> CheckpointReport:
    """Read the Matryoshka keys of a checkpoint folder or Hub repo and report its sizes, default size, normalisation
    and the problems that make a tool misbehave (each with its fix). Only small JSON files are read."""
    source = os.fspath(source)
    files = _Files(source, revision, token)
    config = files.json("config.json")
    st_config = files.json("config_sentence_transformers.json")
    modules = files.json("modules.json")
    if config is None and st_config is None:
        raise FileNotFoundError(f"{source!r} has neither config.json nor config_sentence_transformers.json; "
                                "it is not a transformers or sentence-transformers checkpoint.")
    for name, value, shape in (("config.json", config, dict), ("config_sentence_transformers.json", st_config, dict),
                               ("modules.json", modules, list)):
        if value is not None and not isinstance(value, shape):
            raise ValueError(f"{source!r}: {name} holds a JSON {type(value).__name__}, not the "
                             f"{'object' if shape is dict else 'list'} every tool expects; fix or remove the file.")
    if modules is not None and not all(isinstance(m, dict) and isinstance(m.get("type", ""), str) for m in modules):
        raise ValueError(f"{source!r}: modules.json must list objects with a string \"type\" (as "
                         "sentence-transformers writes it); fix or remove the file.")
    config = config or {}
    keys = {}
    wanted = ("nesting_list", "matryoshka_dimensions", "is_matryoshka", "truncate_dim", "normalize_embeddings",
              "matryoshka_precisions")
    if any(k in config for k in wanted):
        keys["config.json"] = {k: config[k] for k in wanted if k in config}
    if st_config and "truncate_dim" in st_config:
        keys["config_sentence_transformers.json"] = {"truncate_dim": st_config["truncate_dim"]}

    model_type = config.get("model_type")
    kind = ("mrl_hf" if str(model_type).startswith("mrl_") or model_type == "matryoshka" else
            "sentence-transformers" if modules is not None else "transformers")
    problems: list[Problem] = []
    full_dim = _full_dim(config, modules, files)
    dims = _dims(config, full_dim, problems)
    default = _default_dim(config, st_config, dims, full_dim or (dims[-1] if dims else None), problems)
    normalization = _normalization(config, modules, kind, dims, full_dim, problems)
    precisions = _precisions(config, dims, problems)
    _check_prompts(config, st_config, problems)
    missing_code = _missing_remote_code(config.get("auto_map"), files)
    if missing_code:
        problems.append(Problem(
            f"config.json's auto_map names {missing_code}, which the folder does not have: trust_remote_code "
            "loads fail.",
            f"save it again with mrl_hf's save_pretrained (it writes the code), or `mrl-hf export {source} OUT "
            "--remote-code`."))
    if kind == "mrl_hf" and not config.get("auto_map"):
        problems.append(Problem(
            f"model_type {model_type!r} opens only where mrl_hf is installed (config.json has no auto_map).",
            f"write a copy that opens anywhere with `mrl-hf export {source} OUT --remote-code`, or save it again "
            "with mrl_hf (save_pretrained writes the remote code)."))
    return CheckpointReport(source=source, kind=kind, dims=dims, default_dim=default, full_dim=full_dim,
                            normalization=normalization, keys=keys, problems=problems, precisions=precisions)


def _check_prompts(config: dict, st_config, problems: list[Problem]) -> None:
    """mrl_hf and AutoModel read the prompts in config.json, sentence-transformers those of its own file."""
    if not st_config or "prompts" not in config:
        return
    said = [({k: v for k, v in (source.get("prompts") or {}).items() if v}, source.get("default_prompt_name"))
            for source in (config, st_config)]
    if said[0] != said[1]:
        problems.append(Problem(
            f"the prompts differ by tool: config.json says {said[0][0]} (default {said[0][1]!r}; mrl_hf, AutoModel), "
            f"config_sentence_transformers.json says {said[1][0]} (default {said[1][1]!r}; sentence-transformers).",
            "write the same prompts into both files (mrl_hf's save_pretrained does: set model.config.prompts and "
            "save again)."))


def _missing_remote_code(auto_map, files: _Files) -> list[str]:
    """The code files a local folder's ``auto_map`` names but lacks (a "repo--module.Class" entry lives elsewhere)."""
    if not files.local or not isinstance(auto_map, dict):
        return []
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    names = {r.rsplit(".", 1)[0] + ".py" for r in refs if "--" not in r and "." in r}
    return sorted(n for n in names if not (Path(files.source) / n).is_file())


def _full_dim(config: dict, modules, files: _Files) -> int | None:
    for entry in reversed(modules or []):  # the last Dense module of a sentence-transformers stack sets the size
        if entry.get("type", "").endswith("Dense"):
            dense = files.json(f"{entry['path']}/config.json") if entry.get("path") else None
            if dense and dense.get("out_features"):
                return int(dense["out_features"])
    for key in ("embedding_dim", "projection_dim", "hidden_size", "d_model", "dim", "n_embd"):  # DistilBERT, GPT-2
        if isinstance(config.get(key), int):
            return config[key]
    for key in ("neck_hidden_sizes", "hidden_sizes", "embed_dim"):  # per stage, the last one pooled (MobileViT: neck)
        sizes = config.get(key)
        if isinstance(sizes, list) and sizes:
            return sizes[-1]
    if config.get("model_type") == "efficientnet" and isinstance(config.get("hidden_dim"), int):
        return config["hidden_dim"]  # the top convolution's width (elsewhere hidden_dim can be a feed-forward width)
    backbone = config.get("backbone_config")  # mrl_hf's MRLModelFor* keep the width in the backbone's config
    return _full_dim(backbone, None, files) if isinstance(backbone, dict) else None


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _valid_dims(name: str, value, full_dim: int | None, problems: list[Problem]) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(_is_size(d) for d in value):
        problems.append(Problem(f"{name}={value!r} is not a list of positive integers.",
                                "write the trained sizes as a list of integers, e.g. [64, 128, 256, 768]."))
        return None
    if value != sorted(set(value)):
        problems.append(Problem(f"{name}={value} is not strictly increasing.",
                                f"write it sorted without repeats: {sorted(set(value))}."))
    if full_dim is not None and max(value) > full_dim:
        problems.append(Problem(f"{name}={value} lists sizes above the embedding size {full_dim}.",
                                f"keep only sizes <= {full_dim}."))
    return sorted(set(value))


def _dims(config: dict, full_dim: int | None, problems: list[Problem]) -> list[int] | None:
    nesting = _valid_dims("nesting_list", config.get("nesting_list"), full_dim, problems)
    listed = _valid_dims("matryoshka_dimensions", config.get("matryoshka_dimensions"), full_dim, problems)
    if nesting is not None and listed is not None and nesting != listed:
        problems.append(Problem(
            f"config.json's nesting_list {nesting} and matryoshka_dimensions {listed} disagree: mrl_hf uses the "
            "first, vLLM, SGLang and Jina the second.",
            "write the trained sizes into both (mrl_hf's save_pretrained does)."))
    dims = nesting if nesting is not None else listed
    if nesting is not None and listed is None:
        problems.append(Problem(
            f"only nesting_list lists the sizes {nesting}: vLLM and SGLang read matryoshka_dimensions (or "
            "is_matryoshka) and refuse `dimensions` without them.",
            f"add matryoshka_dimensions: {nesting} and is_matryoshka: true to config.json."))
    if dims is None:
        if config.get("is_matryoshka") is True:
            problems.append(Problem(
                "is_matryoshka is true but no key lists the sizes: vLLM then serves any `dimensions`, including "
                "sizes the model was never trained at.",
                "add the trained sizes as matryoshka_dimensions (and nesting_list) to config.json."))
        else:
            problems.append(Problem(
                "no key says the model is Matryoshka: vLLM and SGLang refuse `dimensions` (HTTP 400) and other tools "
                "treat it as a fixed-size model.",
                "add matryoshka_dimensions (the trained sizes) and is_matryoshka: true to config.json."))
    elif config.get("is_matryoshka") is False:
        problems.append(Problem(f"the sizes {dims} are listed but is_matryoshka is false.",
                                "set is_matryoshka: true in config.json (or remove it)."))
    return dims


def _precisions(config: dict, dims, problems: list[Problem]) -> dict[str, list[int]] | None:
    """``matryoshka_precisions`` of config.json, checked: known precisions, each at sizes the model lists."""
    value = config.get("matryoshka_precisions")
    if value is None:
        return None
    known = ("float32", "int8", "binary")
    if not isinstance(value, dict) or not all(
            isinstance(sizes, list) and all(_is_size(m) for m in sizes) for sizes in value.values()):
        problems.append(Problem(f"matryoshka_precisions={value!r} is not a mapping of precision to a list of sizes.",
                                'write it as {"float32": [sizes...], "binary": [sizes...]} (mrl_hf\'s save_pretrained '
                                "does)."))
        return None
    unknown = [name for name in value if name not in known]
    if unknown:
        problems.append(Problem(f"matryoshka_precisions names {unknown}, which mrl_hf does not train.",
                                f"keep only {list(known)}."))
    outside = sorted({m for sizes in value.values() for m in sizes} - set(dims or []))
    if dims is not None and outside:
        problems.append(Problem(f"matryoshka_precisions lists the sizes {outside}, which are not trained sizes {dims}.",
                                f"list only sizes from {dims}."))
    return {name: list(sizes) for name, sizes in value.items()}


def _default_dim(config: dict, st_config, dims, full: int | None, problems: list[Problem]) -> int | None:
    """``full``: the embedding size, which a null or missing ``truncate_dim`` means to either tool."""
    own = config.get("truncate_dim")
    st = st_config.get("truncate_dim") if st_config else None
    # compared where config.json states a default (the contract writes the key, null included; a plain
    # sentence-transformers folder leaves it out and is read by sentence-transformers alone)
    if st_config is not None and "truncate_dim" in config and \
            (own if own is not None else full) != (st if st is not None else full):
        said = lambda value: "null (the full size)" if value is None else value  # noqa: E731
        problems.append(Problem(
            f"the default size differs by tool: config.json says truncate_dim={said(own)}, "
            f"config_sentence_transformers.json says {said(st)}.",
            "write the same truncate_dim into both files."))
    default = st if st is not None else own
    for name, value in (("config.json", own), ("config_sentence_transformers.json", st)):
        if value is None:
            continue
        if not _is_size(value):
            problems.append(Problem(f"{name} has truncate_dim={value!r}, which is not a positive integer.",
                                    "write one of the trained sizes, or null for the full size."))
        elif dims is not None and value not in dims and value != full:  # the full size needs no listing (vLLM)
            problems.append(Problem(
                f"the default size truncate_dim={value} ({name}) is not one of the trained sizes {dims}: vLLM refuses "
                "it and other tools serve a size the model was not trained at.",
                f"set truncate_dim to one of {dims} (or null for the full size)."))
    return default


def _normalization(config: dict, modules, kind: str, dims, full_dim, problems: list[Problem]) -> str:
    if modules is not None:
        types = [entry.get("type", "").rsplit(".", 1)[-1] for entry in modules]
        if types and types[-1] == "Normalize":
            smaller = [d for d in (dims or []) if full_dim is None or d < full_dim]
            problems.append(Problem(
                "the sentence-transformers stack ends with Normalize: sentence-transformers normalises the full "
                "vector and then truncates, so vectors cut to a smaller size are not unit length"
                + (f" (sizes {smaller})." if smaller else "."),
                "remove the last Normalize entry from modules.json and encode with normalize_embeddings=True "
                "(slice, then normalise); cosine scores do not change."))
            return "sentence-transformers: normalise the full vector, then truncate"
        odd = [t for t in types if t not in _VLLM_MODULES]
        if odd or ("Normalize" in types and "Dense" in types[types.index("Normalize"):]):
            problems.append(Problem(
                f"vLLM rebuilds a sentence-transformers stack as Pooling -> Dense -> slice -> normalise; this stack "
                f"({' -> '.join(types)}) is not that, so vLLM would serve other vectors without an error"
                + (f" (it skips {odd})." if odd else " (it ignores a Normalize before a Dense)."),
                "serve this folder with sentence-transformers or mrl_hf, or export the model without the adaptor "
                "for vLLM."))
    if kind == "mrl_hf":
        on = config.get("normalize_embeddings")
        return f"mrl_hf: {NORMALIZATION}" + ("" if on else " (when encode(normalize=True) is asked)")
    if modules is not None:
        return ("sentence-transformers and vLLM: the raw slice; normalise it with normalize_embeddings=True "
                "(sentence-transformers) or \"use_activation\": true (vLLM), which slice, then normalise (cosine "
                "similarity is the same either way)")
    return f"not stated; for a Matryoshka model: {NORMALIZATION}"
