"""Save an mrl_hf checkpoint for the Hub (weights, config, tokenizer/processor, model card, plot) and push it.

``save_for_hub(model, folder)`` commits the folder's files as one set (``mrl_hf.saving.owned_files``); ``push_to_hub(model_or_folder, repo_id)`` checks
everything it can before any request (config validation, repo id, token), stages the upload in a temporary
copy (the local checkpoint is never modified) and sends it as one commit, which the Hub applies all or nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..saving import holds_files, is_weight_file, owned_files, reading
from .card import PLOT_FILE, render_model_card
from .remote_code import strip_remote_code, write_remote_code

CARD_SETTINGS_FILE = "mrl_card.json"    # what the card was rendered from, so a later push can re-render it
RESULTS_FILE = "mrl_results.json"       # ResultsTable records (method, metric, dim, value)
_CARD_KEYS = ("model_method", "eval_dataset", "eval_description", "task_type", "base_model", "datasets", "license",
              "model_name", "description", "training", "tags")


class HubPushError(RuntimeError):
    """A push that the Hub refused or that failed on the way; nothing was committed."""


_HEAD_SIZED = ("MRLModelForImageClassification", "MRLModelForSequenceClassification")


def _architecture_of(model_or_config) -> str:
    if hasattr(model_or_config, "config"):
        return type(model_or_config).__name__
    return (getattr(model_or_config, "architectures", None) or [""])[0]


def check_config(model_or_config) -> None:
    """Re-validate the Matryoshka fields (they may have been edited after construction)."""
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "validate_matryoshka"):
        raise TypeError(f"{type(model_or_config).__name__} is not an mrl_hf model or config (no Matryoshka fields); "
                        "push mrl_hf models, or use model.push_to_hub from transformers for others.")
    try:
        config.validate_matryoshka()
        if _architecture_of(model_or_config) in _HEAD_SIZED:  # their config.truncate_dim picks a classifier
            from ..modeling.auto_classification import check_logits_dim

            check_logits_dim(config.truncate_dim, config, name="config.truncate_dim")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"refusing to push: the model's config fails validation ({exc}). Fix the config and retry; "
                         "nothing was uploaded.") from exc


def check_repo_id(repo_id) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise TypeError(f"repo_id must be a string like 'your-name/model-name', got {type(repo_id).__name__}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"invalid repo_id {repo_id!r}: {exc} Use 'namespace/name' with letters, digits, '-', '_', "
                         "'.'; nothing was uploaded.") from None
    return repo_id


def resolve_token(token):
    from huggingface_hub import get_token

    token = get_token() if token is None or token is True else token
    if not token:
        raise ValueError("pushing needs a Hugging Face write token: pass token=... (mrl-hf push --token), set "
                         "HF_TOKEN, or run `hf auth login`; nothing was uploaded.")
    return token


def write_card(folder, model_or_config, repo_id: str, results=None, remote_code: bool = False, **card_kwargs):
    """Render the card (and the accuracy-vs-dim plot when there are results) into ``folder``."""
    folder = Path(folder)
    unknown = set(card_kwargs) - set(_CARD_KEYS)
    if unknown:
        raise TypeError(f"unknown model card setting(s) {sorted(unknown)}; the card takes {list(_CARD_KEYS)}.")
    plot_file = None
    if results is not None and len(results):
        results.to_json(folder / RESULTS_FILE)
        try:
            model_method = card_kwargs.get("model_method") or results.methods[0]
            results.plot(results.metrics[0], path=str(folder / PLOT_FILE),
                         title=f"{card_kwargs.get('model_name') or repo_id.split('/')[-1]}: "
                               f"{model_method} vs baselines")
            plot_file = PLOT_FILE
        except ImportError:  # matplotlib is optional ('plot' extra): the card keeps its table
            plot_file = None
    card = render_model_card(model_or_config, repo_id, results=results, plot_file=plot_file,
                             remote_code=remote_code, **card_kwargs)
    card.save(str(folder / "README.md"))
    settings = {k: v for k, v in card_kwargs.items() if v is not None}
    (folder / CARD_SETTINGS_FILE).write_text(json.dumps({"repo_id": repo_id, **settings}, indent=1) + "\n")
    return card


def save_for_hub(model, save_directory, *, repo_id: str | None = None, tokenizer=None, results=None,
                 remote_code: bool = True, overwrite: bool = True, max_shard_size: int | str | None = None,
                 **card_kwargs) -> Path:
    """Save ``model`` (safetensors + config with the Matryoshka keys), its tokenizer / processor, the model card,
    the plot and (unless ``remote_code=False``) the flat modeling code with ``auto_map``, all at once into
    ``save_directory``. ``card_kwargs`` go to ``render_model_card`` (``eval_dataset``, ``base_model``, ...);
    ``max_shard_size`` to ``save_pretrained``."""
    check_config(model)
    target = Path(save_directory).absolute()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True or choose a new folder.")
    repo_id = repo_id or f"your-name/{target.name}"
    own = getattr(model, "tokenizer", None)
    given = tokenizer is not None and hasattr(model, "tokenizer")  # the one passed in, not the model's, is saved
    with owned_files(target, "model", replaces=is_weight_file) as staged:
        if given:
            model.tokenizer = tokenizer
        try:
            model.write_files(staged, remote_code=remote_code,
                              **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
        finally:
            if given:
                model.tokenizer = own
        tokenizer = tokenizer if tokenizer is not None else own
        if tokenizer is not None and not (staged / "tokenizer_config.json").exists():
            tokenizer.save_pretrained(staged)
        write_card(staged, model, repo_id, results=results, remote_code=remote_code, **card_kwargs)
    return target


def _load_folder_config(folder: Path):
    from transformers import AutoConfig

    from .. import modeling  # noqa: F401  (registers the mrl_hf model types with the Auto classes)

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; pass a folder written by save_pretrained / "
                                "save_for_hub (or a model).")
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} has no safetensors weights; save the model with save_pretrained.")
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"refusing to push {folder}: its config.json fails validation ({exc}); nothing was "
                         "uploaded.") from exc
    check_config(config)
    return config


def push_to_hub(model_or_folder, repo_id: str, *, token: bool | str | None = None, private: bool | None = None,
                commit_message: str | None = None, commit_description: str | None = None, create_pr: bool = False,
                revision: str | None = None, max_shard_size: int | str | None = None, tokenizer=None, results=None,
                remote_code: bool = True, regenerate_card: bool | None = None, **card_kwargs) -> str:
    """Push an mrl_hf model, or a folder saved by ``save_for_hub`` / ``save_pretrained`` (e.g. a training output),
    to ``repo_id`` in one commit. Returns the commit URL (or the pull request's, with ``create_pr=True``).

    The arguments of ``PreTrainedModel.push_to_hub`` mean what they mean there (``tags`` is a card setting);
    every mrl_hf model's own ``model.push_to_hub(repo_id, ...)`` comes here.

    For a model, the folder is built by ``save_for_hub`` in a temporary directory. For a folder, its files are
    copied to a temporary directory, a card is rendered when the folder has none (or ``regenerate_card=True``,
    from ``mrl_results.json`` / ``mrl_card.json`` and ``card_kwargs``), and remote code is added on request.
    Raises ``ValueError`` (bad config, repo id or missing token; checked before any request) or
    ``HubPushError`` (the Hub failed; nothing was committed and local files are untouched).
    """
    repo_id = check_repo_id(repo_id)
    if isinstance(model_or_folder, (str, os.PathLike)):
        folder = Path(model_or_folder)
        config = _load_folder_config(folder)
    else:
        check_config(model_or_folder)
        folder = config = None
    token = resolve_token(token)
    repo_id = _with_namespace(repo_id, token)  # the card names the repo the Hub creates: "name" goes to "user/name"

    with tempfile.TemporaryDirectory(prefix="mrl_hf_push_") as tmp:
        staged = Path(tmp) / "repo"
        if folder is None:
            save_for_hub(model_or_folder, staged, repo_id=repo_id, tokenizer=tokenizer, results=results,
                         remote_code=remote_code, max_shard_size=max_shard_size, **card_kwargs)
        else:
            _stage_folder(folder, staged, config, repo_id, results, remote_code, regenerate_card, card_kwargs)
        message = commit_message or f"Upload Matryoshka model ({config.model_type if config else 'mrl_hf'})"
        return _upload(staged, repo_id, token, private, revision, message, commit_description, create_pr)


def _with_namespace(repo_id: str, token: str) -> str:
    """``repo_id`` as the Hub will name it: an id without a namespace goes to the token's user."""
    if "/" in repo_id:
        return repo_id
    from huggingface_hub import HfApi

    try:
        user = HfApi(token=token).whoami()["name"]
    except Exception as exc:
        raise HubPushError(f"pushing to {repo_id} failed: asking the Hub whose token this is, to name the repo "
                           f"<user>/{repo_id}, failed ({type(exc).__name__}: {str(exc).splitlines()[0]}). Nothing was "
                           f"committed; pass repo_id='<user or org>/{repo_id}', or check the token and the network."
                           ) from exc
    return f"{user}/{repo_id}"


def _model_class(config) -> type:
    """The mrl_hf class named by ``config.architectures``."""
    from transformers import (
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )

    arch = (config.architectures or [None])[0]
    classes = {}
    for auto in (AutoModel, AutoModelForMaskedLM, AutoModelForImageClassification, AutoModelForSequenceClassification):
        classes.update({cls.__name__: cls for cls in auto._model_mapping._extra_content.values()})
    if arch not in classes:
        raise ValueError(f"cannot write remote code for architecture {arch!r}; known: {sorted(classes)}.")
    return classes[arch]


def export_remote_code(checkpoint, output, overwrite: bool = False) -> Path:
    """Copy a checkpoint folder to ``output`` with the flat modeling code and ``auto_map``, so that
    ``AutoModel.from_pretrained(output, trust_remote_code=True)`` opens it where mrl_hf is not installed (checkpoints
    saved by this version of mrl_hf already carry it). Committed as one set; a non-empty ``output`` is written into
    only with ``overwrite=True``."""
    folder = Path(checkpoint)
    config = _load_folder_config(folder)
    target = Path(output).absolute()
    if target.is_file():
        raise FileExistsError(f"{target} is a file; choose a folder path for the copy.")
    if target.is_dir() and holds_files(target) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; choose a new folder or pass overwrite=True.")
    with tempfile.TemporaryDirectory(prefix="mrl_hf_remote_code_") as tmp:
        staged = Path(tmp) / "copy"
        with reading(folder):
            shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(".*", "__pycache__", "checkpoint-*", "runs"))
        with owned_files(target, "model", replaces=is_weight_file) as commit:
            for path in staged.rglob("*"):
                if path.is_file():
                    (commit / path.relative_to(staged)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, commit / path.relative_to(staged))
            write_remote_code(_model_class(config), commit)
            if (commit / CARD_SETTINGS_FILE).exists():  # mrl_hf's own card now says trust_remote_code=True
                _render_card_again(commit, config)
    return target


def _render_card_again(folder: Path, config, repo_id: str | None = None, results=None, card_kwargs=None) -> None:
    """Render the card of ``folder`` from its settings file and ``mrl_results.json`` (``repo_id``, ``results`` and
    ``card_kwargs`` replace theirs), for the code the folder holds now."""
    from ..evaluation.table import ResultsTable

    settings_path = folder / CARD_SETTINGS_FILE
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    own_repo_id = settings.pop("repo_id", None)
    settings.update(card_kwargs or {})
    if results is None and (folder / RESULTS_FILE).exists():
        results = ResultsTable.from_json(str(folder / RESULTS_FILE))
    has_code = bool(json.loads((folder / "config.json").read_text()).get("auto_map"))
    write_card(folder, config, repo_id or own_repo_id or f"your-name/{folder.name}", results=results,
               remote_code=has_code, **settings)


def _stage_folder(folder: Path, staged: Path, config, repo_id, results, remote_code, regenerate_card, card_kwargs):
    with reading(folder):  # never a mix of two saves' files
        shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(".*", "__pycache__", "checkpoint-*", "runs"))
    had_code = bool(getattr(config, "auto_map", None))
    if remote_code and not had_code:
        write_remote_code(_model_class(config), staged)
    elif not remote_code and had_code:
        strip_remote_code(staged)
    settings_path = staged / CARD_SETTINGS_FILE
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else None
    asked = results is not None or bool(card_kwargs)
    if regenerate_card is False and asked:
        raise ValueError("results / card settings go into a card rendered again; leave regenerate_card unset (or "
                         "True) to use them, or drop them to push the folder's README as it is.")
    # mrl_hf's own card (its settings file is there) is rendered again when it names another repo, or another
    # answer to "does it need trust_remote_code"; a README of the user's own is kept unless asked
    stale = settings is not None and (settings.get("repo_id") != repo_id or had_code != bool(remote_code))
    if regenerate_card or (regenerate_card is None and (not (staged / "README.md").exists() or stale or asked)):
        _render_card_again(staged, config, repo_id, results, card_kwargs)


def _reason(exc) -> str:
    """The Hub's own words for a refused request (``X-Error-Message``, e.g. "Invalid rev id: dev"), else the first
    line of the error."""
    said = getattr(getattr(exc, "response", None), "headers", {}).get("X-Error-Message")
    first = str(exc).splitlines()[0]
    return f"{first} ({said})" if said and said not in first else first


def _upload(staged: Path, repo_id: str, token: str, private, revision, commit_message: str,
            commit_description: str | None = None, create_pr: bool = False) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    # One create_commit with every file, not upload_folder: upload_folder retries a failed commit in smaller
    # commits (huggingface_hub 2.x), which could leave a repo holding part of a push.
    # Hidden files are left out, as a pushed folder's are: mrl_hf's own save bookkeeping (.mrl-lock, .mrl-owner-*)
    operations = [CommitOperationAdd(path_in_repo=path.relative_to(staged).as_posix(), path_or_fileobj=str(path))
                  for path in sorted(staged.rglob("*"))
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(staged).parts)]
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/"):  # a new branch is made, as transformers does
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        # Weights the repo holds but this checkpoint does not (a single file replaced by shards, or the reverse)
        # would be loaded instead of the new ones: the commit removes them, as a local save does.
        pushed = {op.path_in_repo for op in operations}
        operations += [CommitOperationDelete(path_in_repo=name)
                       for name in api.list_repo_files(repo_id, revision=revision)  # a pull request's base
                       if "/" not in name and is_weight_file(name) and name not in pushed]
        info = api.create_commit(repo_id, operations, commit_message=commit_message,
                                 commit_description=commit_description, revision=revision, create_pr=create_pr)
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        fix = ("the token was refused: check it (write access to the repo) or log in again with `hf auth login`"
               if status in (401, 403) else "retry the push")
        raise HubPushError(
            f"pushing to {repo_id} failed (HTTP {status}): {_reason(exc)}. Nothing was committed (a "
            f"commit is applied all or nothing) and your local files are unchanged; {fix}."
        ) from exc
    except Exception as exc:  # no answer at all: refused connection, timeout, offline mode
        raise HubPushError(
            f"pushing to {repo_id} failed before the Hub answered ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "Nothing was committed and your local files are unchanged; check the network (and HF_HUB_OFFLINE / "
            "HF_ENDPOINT) and retry the push."
        ) from exc
    return str(info.pr_url) if create_pr and getattr(info, "pr_url", None) else str(info)
