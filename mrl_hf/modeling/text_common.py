"""What the text models share: pooling the hidden states, the pair loss, finding the checkpoint's tokenizer, checking
inputs, the encode length and the files that make a saved folder a sentence-transformers model."""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import AutoTokenizer

from ..contract import sentence_transformers_keys
from ..losses import nested_contrastive_loss
from .gather import all_gather_with_grad

POOLING_MODES = ("mean", "cls", "last_token")

# Any one of these next to the weights means the checkpoint has a tokenizer.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def _hub_kwargs(kwargs: dict) -> dict:
    """The ``from_pretrained`` arguments that say where a checkpoint's other files are read from."""
    return {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "subfolder") if k in kwargs}


def _has_tokenizer_files(path, hub: dict) -> bool:
    from transformers.utils.hub import cached_file

    for name in TOKENIZER_FILES:
        try:
            if cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **hub) is not None:
                return True
        except (OSError, ValueError):
            return False
    return False


# sentence-transformers' pooling modes -> mrl_hf's (max, weighted mean and mean_sqrt_len have no mrl_hf twin), and
# the boolean keys older Pooling configs use for them
_ST_POOLING = {"mean": "mean", "cls": "cls", "lasttoken": "last_token"}
_ST_LEGACY_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                    "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_ST_KEPT_MODULES = ("Transformer", "Pooling", "Normalize")  # what an mrl_hf embedding model computes itself


def _read_json(path, name: str, hub: dict):
    """The JSON file ``name`` of a checkpoint folder or Hub repo, or None when it has none."""
    import json

    from transformers.utils.hub import cached_file

    found = cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False, **hub)
    if found is None:
        return None
    with open(found, encoding="utf8") as handle:
        return json.load(handle)


def sentence_transformers_pooling(path, kwargs: dict, model_class: str, choices: Sequence[str]) -> str | None:
    """The pooling a plain checkpoint that is a sentence-transformers model (a ``modules.json``) uses, or None when it
    is not one or ``pooling=`` is among the ``from_pretrained`` ``kwargs``. Loading such a folder as ``model_class``
    must embed as sentence-transformers does: a pooling with no mrl_hf twin, or modules after the pooling (Dense,
    Router, an adaptor) that the model would drop, are refused. A ``Normalize`` module is not copied into
    ``normalize_embeddings``: mrl_hf normalises each prefix after cutting it, when asked (``encode(normalize=True)``),
    so vectors keep their direction and only the full size's norm differs."""
    if "pooling" in kwargs:
        return None
    hub = _hub_kwargs(kwargs)
    modules = _read_json(path, "modules.json", hub)
    if not isinstance(modules, list):
        return None
    fix = (f"load it with sentence_transformers.SentenceTransformer, or pass pooling= (one of {list(choices)}) to "
           f"load the encoder alone as {model_class}")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    extra = [kind for kind in kinds if kind not in _ST_KEPT_MODULES]
    if extra:
        sizes = (" and nesting_list= ending at the encoder's own width (the folder's sizes are those of the Dense "
                 "output)") if "Dense" in extra else ""
        raise ValueError(f"{str(path)!r} is a sentence-transformers model with {extra} after its encoder, which "
                         f"{model_class} would leave out (its embeddings would differ); {fix}{sizes}.")
    if "Pooling" not in kinds:
        return None
    settings = _read_json(path, f"{modules[kinds.index('Pooling')].get('path', '')}/config.json".lstrip("/"), hub) or {}
    if settings.get("include_prompt") is False:
        raise ValueError(f"{str(path)!r} is a sentence-transformers model whose Pooling leaves the prompt's tokens out "
                         f"(include_prompt=False), which {model_class} does not do; {fix}.")
    modes = settings.get("pooling_mode")
    if modes is None:  # sentence-transformers < 6 wrote one boolean per mode; none set means its default, mean
        modes = [mode for flag, mode in _ST_LEGACY_FLAGS.items() if settings.get(flag) is True] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    ours = _ST_POOLING.get(modes[0]) if len(modes) == 1 else None
    if ours not in choices:
        raise ValueError(f"{str(path)!r} is a sentence-transformers model whose Pooling uses {modes}; {model_class} "
                         f"pools with one of {list(choices)}; {fix}.")
    return ours


def add_sentence_transformers_prompts(path, kwargs: dict) -> None:
    """Put the prompts of a sentence-transformers folder (e5 / bge / nomic: ``{"query": "query: ", ...}``; an mrl_hf
    save's own, from its config.json) into the ``from_pretrained`` ``kwargs``, merged as sentence-transformers merges
    them: a ``prompts=`` passed wins name by name, a ``default_prompt_name=`` passed (not None) wins; nothing for
    other folders or prompts all empty."""
    check_prompts(kwargs.get("prompts"), None)  # before merging: a list or a string names itself, not a TypeError
    hub = _hub_kwargs(kwargs)
    if not isinstance(_read_json(path, "modules.json", hub), list):
        return
    config = _read_json(path, "config.json", hub) or {}
    own = str(config.get("model_type", "")).startswith("mrl_")
    if own and "prompts" not in kwargs and "default_prompt_name" not in kwargs:
        return  # an mrl_hf save: its config.json holds the prompts (mrl-hf inspect flags files that disagree)
    settings = config if own else (_read_json(path, "config_sentence_transformers.json", hub) or {})
    saved = settings.get("prompts") if isinstance(settings.get("prompts"), dict) else {}
    prompts = {**saved, **(kwargs.get("prompts") or {})}
    default = kwargs.get("default_prompt_name") or settings.get("default_prompt_name")
    if any(prompts.values()) or default is not None:
        kwargs["prompts"], kwargs["default_prompt_name"] = prompts, default


def check_prompts(prompts, default_prompt_name) -> None:
    """``prompts``: None or a mapping of names to strings; ``default_prompt_name``: None or one of its names
    (``"query"`` and ``"document"`` always exist, empty unless set, as in sentence-transformers)."""
    if prompts is not None and (not isinstance(prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())):
        raise ValueError(f"prompts={prompts!r} must be a dict of prompt names to strings, e.g. "
                         "{'query': 'query: ', 'document': 'passage: '}, or None.")
    if default_prompt_name not in (None, "query", "document") and default_prompt_name not in (prompts or {}):
        raise ValueError(f"default_prompt_name={default_prompt_name!r} is not one of the prompts "
                         f"{sorted(prompts or {})}; add it to prompts or set it to None.")


def resolve_prompt(config, task: str | None = None, prompt_name: str | None = None, prompt: str | None = None) -> str:
    """The text put before every input, chosen as sentence-transformers (>= 5) chooses it: ``prompt``; else
    ``config.prompts[prompt_name]``; else, for ``task="query"`` / ``"document"``, the prompt of that name (none when
    the model has none: sentence-transformers' own defaults are empty ``"query"`` and ``"document"`` prompts, so a
    ``"passage"`` prompt is not used for documents); else the ``default_prompt_name``'s."""
    prompts = getattr(config, "prompts", None) or {}
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt={prompt!r} must be a str.")
        return prompt
    if prompt_name is not None:
        if prompt_name in prompts:
            return prompts[prompt_name]
        if prompt_name in ("query", "document"):  # sentence-transformers' defaults: empty
            return ""
        raise ValueError(f"prompt_name={prompt_name!r} is not one of the model's prompts {sorted(prompts)}; "
                         "pass prompt= with the text itself, or set config.prompts.")
    if task is not None:
        return prompts.get(task) or ""
    default = getattr(config, "default_prompt_name", None)
    return prompts.get(default, "") if default is not None else ""


def try_load_tokenizer(path, kwargs):
    """The tokenizer saved with the checkpoint, or None. transformers 5 gives a folder without tokenizer files a
    tokenizer with only the special tokens (every word becomes [UNK]), so the files are looked for first."""
    keep = _hub_kwargs(kwargs)
    if not _has_tokenizer_files(path, keep):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code"), **keep)
    except (OSError, ValueError, TypeError, KeyError):  # unreadable: encode() will ask for one
        return None
    limit = _sentence_transformers_max_length(path, keep)
    if limit is not None and limit < (tokenizer.model_max_length or float("inf")):
        tokenizer.model_max_length = limit  # sentence-transformers reads this many tokens (256 for MiniLM, not 512)
    return tokenizer


def _sentence_transformers_max_length(path, hub: dict) -> int | None:
    """``max_seq_length`` of a sentence-transformers folder's ``sentence_bert_config.json``, or None."""
    try:
        value = (_read_json(path, "sentence_bert_config.json", hub) or {}).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


# families that number positions from pad_token_id + 1 (RoBERTa's scheme): that many fewer tokens fit. The text
# encoders whose transformers modeling code numbers positions with create_position_ids_from_input_ids(padding_idx).
_POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text",
                                      "longformer", "mpnet", "roberta-prelayernorm", "ibert", "esm", "luke",
                                      "markuplm", "xmod", "lilt", "clap_text_model", "altclip_text_model",
                                      "bridgetower_text_model"})


def right_padding(tokenizer):
    """The tokenizer to save with a text model: padding on the right, as ``encode`` pads. sentence-transformers pads
    as the saved tokenizer says, and backbones with absolute positions (BERT) count left padding as positions."""
    backend = getattr(tokenizer, "_tokenizer", None)  # a fast tokenizer keeps the last call's padding, and saves it
    left_backend = (getattr(backend, "padding", None) or {}).get("direction") == "left"
    if getattr(tokenizer, "padding_side", "right") == "right" and not left_backend:
        return tokenizer
    import copy

    saved = copy.deepcopy(tokenizer)
    saved.padding_side = "right"
    saved.init_kwargs["padding_side"] = "right"
    if left_backend:
        saved._tokenizer.no_padding()  # transformers pads each call as asked; the file must not say "left"
    return saved


_NO_STATED_LIMIT = 1_000_000


def default_max_length(tokenizer, config) -> int:
    """The tokenizer's ``model_max_length``, capped at the tokens the backbone's ``max_position_embeddings`` can
    place (when it has them; RoBERTa-style families lose ``pad_token_id + 1`` of them); 512 where neither states a
    limit (XLNet, Mamba with a tokenizer of no stated length). ``config=None``: the tokenizer's limit alone."""
    text = None if config is None else config.get_text_config()
    positions = getattr(text, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions < 1:  # XLNet states -1: no limit
        positions = None
    elif getattr(text, "model_type", None) in _POSITIONS_AFTER_PADDING and text.pad_token_id is not None:
        positions -= text.pad_token_id + 1
    limit = getattr(tokenizer, "model_max_length", None)
    if not limit or limit > _NO_STATED_LIMIT:  # transformers' int(1e30) for a tokenizer that states none
        limit = None
    return int(min(limit, positions) if limit and positions else limit or positions or 512)


def config_has_asymmetric_adaptor(config) -> bool:
    """Whether the config's ``adaptor`` (as ``attach_adaptor`` writes it) embeds queries on their own."""
    return bool((getattr(config, "adaptor", None) or {}).get("asymmetric"))


def sentence_transformers_files(config, max_seq_length: int) -> dict[str, object]:
    """The files that make a saved folder load in sentence-transformers (>= 6) as one Transformer module whose output
    is the model's ``embeddings`` (pooling and projection included). With an asymmetric adaptor the module also passes
    ``task`` on (``encode_query`` / ``encode_document``) to the model's forward."""
    module = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
    if config_has_asymmetric_adaptor(config):
        module["kwargs"] = ["task"]
    return {
        "modules.json": [module],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "embeddings"}},
            "module_output_name": "sentence_embedding", "max_seq_length": max_seq_length},
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer", "prompts": config.prompts or {"query": "", "document": ""},
            "default_prompt_name": config.default_prompt_name, **sentence_transformers_keys(config)},
    }


def check_nonempty(inputs) -> None:
    if inputs is None:
        raise ValueError("give input_ids (or inputs_embeds).")
    if isinstance(inputs, torch.Tensor) and (inputs.dim() < 2 or 0 in inputs.shape[:2]):
        raise ValueError(f"got input of shape {tuple(inputs.shape)}; expected (batch, seq_len) with batch >= 1 and "
                         "seq_len >= 1. Skip empty batches (e.g. dataloader_drop_last=True) and tokenize with "
                         "return_tensors='pt'.")


def check_texts(texts) -> None:
    if isinstance(texts, (bytes, dict)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}.")
    if len(texts) == 0:
        raise ValueError("texts is empty; pass at least one string.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} ({text!r:.50}); every text must be a str.")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` ``(batch, seq, d)`` over the positions where ``attention_mask`` is 1.

    ``"mean"``: masked mean (padded positions are excluded even where the backbone left NaN or garbage there);
    ``"cls"``: the first attended token; ``"last_token"``: the last attended token. Both token modes find the token
    from the mask, so the pooling itself does not depend on the padding side. The hidden states may: a backbone
    with absolute positions (BERT, GPT-2) counts left padding as positions (``encode`` pads on the right)."""
    mask = attention_mask.to(torch.bool)
    if mode == "mean":
        summed = hidden.masked_fill(~mask.unsqueeze(-1), 0.0).sum(1)
        return summed / mask.sum(1, keepdim=True).clamp_min(1).to(hidden.dtype)
    seq_len = mask.shape[1]
    if mode == "cls":
        index = mask.to(torch.int32).argmax(1)  # first 1 (0 for a row without any)
    elif mode == "last_token":
        index = seq_len - 1 - mask.flip(1).to(torch.int32).argmax(1)  # last 1 (seq_len - 1 for a row without any)
    else:
        raise ValueError(f"pooling={mode!r} is not supported; choose one of {POOLING_MODES}.")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]


def embed_each_text_once(embed, input_ids, attention_mask=None, **kwargs):
    """``embed(input_ids, attention_mask, **kwargs) -> (pooled, backbone_output)`` run on each distinct row only (rows
    equal in ids and mask; the first copy of each), every output spread back to all rows. The same results
    as embedding every row, for less work when a batch repeats a text (a passage that answers several queries); in
    training mode the copies of a text share one dropout mask. Other per-row id tensors (``token_type_ids``,
    ``position_ids``) are part of what makes rows equal; with any other tensor input (``inputs_embeds``) every row is
    embedded."""
    n = 0 if input_ids is None else input_ids.shape[0]
    per_row = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    if n < 2 or any(v.shape[:1] != (n,) or v.dim() != 2 or v.is_floating_point() for v in per_row.values()):
        return embed(input_ids, attention_mask, **kwargs)
    if attention_mask is not None:
        per_row["attention_mask"] = attention_mask
    key = torch.cat([input_ids, *(v.to(input_ids.dtype) for v in per_row.values())], 1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(len(key), device=key.device)
    first = torch.full((int(inverse.max()) + 1,), len(key), device=key.device).scatter_reduce(0, inverse, rows, "amin")
    if len(first) == len(key):
        return embed(input_ids, attention_mask, **kwargs)
    kwargs.update({k: v[first] for k, v in per_row.items() if k != "attention_mask"})
    pooled, out = embed(input_ids[first], None if attention_mask is None else attention_mask[first], **kwargs)

    def spread_rows(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == len(first):
            return value.index_select(0, inverse)
        if isinstance(value, tuple):
            return tuple(spread_rows(v) for v in value)
        return value

    return pooled.index_select(0, inverse), type(out)(**{k: spread_rows(v) for k, v in out.items()})


def pair_contrastive_loss(config, anchors: torch.Tensor, candidates: list[torch.Tensor]):
    """``(loss, per_dim_losses)``: the nested InfoNCE of anchor ``i`` against positive ``i`` (``candidates[0]``), with
    every other positive (and the negatives, ``candidates[1]``) as in-batch negatives, per ``config``. With
    ``config.gather_across_processes`` the rows of every process take part (each part gathered in rank order, so
    anchor ``i`` still faces positive ``i``)."""
    if config.gather_across_processes:
        anchors, candidates = all_gather_with_grad(anchors), [all_gather_with_grad(c) for c in candidates]
    loss, per_dim, _ = nested_contrastive_loss(
        anchors, torch.cat(candidates), config.nesting_list,
        temperature=config.contrastive_temperature,
        relative_importance=config.relative_importance,
        precisions=config.matryoshka_precisions,
        quantization_weight=config.quantization_weight,
        binary_surrogate=config.binary_surrogate,
    )
    return loss, per_dim
