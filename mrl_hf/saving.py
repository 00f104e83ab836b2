"""Saves that leave a folder complete or unchanged, and never touch files they do not own.

Every mrl_hf writer (the models' ``save_pretrained``, ``save_for_hub``, the sentence-transformers export,
``MatryoshkaIndex.save``, ``MatryoshkaAdaptor.save_pretrained``) saves through ``owned_files(folder, owner)``::

    with owned_files(folder, "index") as staging:
        ...  # write the files into ``staging``, a new folder inside ``folder``

When the block ends without an error the files are committed:

1. the staged files are fsynced (an I/O error propagates: a failing disk never reports success);
2. a journal (``.mrl-commit.json``) naming the renames and deletions below is written and fsynced: the commit point;
3. each staged file (with the mode ``open`` gives a new file) is renamed onto its name (``os.replace``, atomic per file); the files that the previous save
   of the same owner wrote and this one does not are deleted; the owner's manifest (``.mrl-owner-<owner>.json``)
   records this save's files;
4. the journal and the staging folder are removed.

An error inside the block removes the staging folder and changes nothing else (a folder the save created stays,
holding the lock file: removing it could pull it from under another save waiting on that lock). A crash before the
commit point leaves the old files as they were (the staging folder is debris, which the next save or load removes);
a crash after it leaves the journal, which the next save or load of the folder finishes (roll forward). Only the files a save
names, or that the owner's previous save named, are ever replaced or deleted: other files (a Trainer's
``checkpoint-*`` folders, optimizer state, notes, the files of another owner) are left alone, and so is the folder
itself, so a mount point, a symlink or a read-only folder behaves as it does for ``open``.

Writers hold an exclusive lock on ``.mrl-lock`` in the folder (``fcntl.flock``); loaders go through
``reading(folder)``, which finishes an interrupted commit (and removes a killed save's staging folder) when no save
is running, then holds a shared lock: a load never sees the files of two
different saves, and two saves into one folder take turns. (No locking where ``fcntl`` is missing, e.g. Windows.)
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: saves stay atomic per commit, but a concurrent load is not excluded
    fcntl = None

LOCK_FILE = ".mrl-lock"
JOURNAL_FILE = ".mrl-commit.json"
STAGING_PREFIX = ".mrl-staging-"
MANIFEST_PREFIX = ".mrl-owner-"
_INTERNAL = (LOCK_FILE, JOURNAL_FILE, STAGING_PREFIX, MANIFEST_PREFIX)


class SaveError(OSError):
    """A save that could not be completed; the files that were in the folder before are unchanged."""


# ---- low-level file system steps ------------------------------------------------------------------------------

def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # some file systems cannot fsync a directory; a file's data must reach the disk, so that error propagates
        if not (directory and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _default_file_mode() -> int:
    return 0o666 & ~_umask()  # what open() gives a new file; mkstemp gives 0o600


def _write_json(path: Path, content) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf8") as handle:
        json.dump(content, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _is_internal(name: str) -> bool:
    return name.startswith(_INTERNAL)


def holds_files(folder) -> bool:
    """Whether ``folder`` holds anything besides this module's own bookkeeping (the lock a load or a failed save
    leaves behind): what "the folder is not empty" means before writing into it."""
    return any(not _is_internal(entry.name) for entry in os.scandir(folder))


# ---- locks ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        if exclusive:
            raise
        try:  # a read-only folder: lock if a writer created the lock file, else nobody can be writing
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---- recovery --------------------------------------------------------------------------------------------------

def _finish_commit(folder: Path) -> None:
    """Roll forward a commit whose journal exists (a crash after the commit point); then remove staging debris."""
    journal_path = folder / JOURNAL_FILE
    if journal_path.exists():
        journal = json.loads(journal_path.read_text(encoding="utf8"))
        staging = folder / journal["staging"]
        for name in journal["files"]:
            if (staging / name).exists():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, folder / name)
        for name in journal["delete"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(folder / name)
            _remove_empty_parents(folder, name)
        _write_json(folder / f"{MANIFEST_PREFIX}{journal['owner']}.json",
                    {"owner": journal["owner"], "files": journal["files"]})
        _fsync(folder, directory=True)
        os.remove(journal_path)
    for entry in folder.iterdir():
        if entry.name.startswith(STAGING_PREFIX):  # a save that died before its commit point
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.endswith(".tmp") and entry.name.startswith((MANIFEST_PREFIX, JOURNAL_FILE)):
            with contextlib.suppress(OSError):  # a bookkeeping file whose write was cut short
                os.remove(entry)


def _remove_empty_parents(folder: Path, name: str) -> None:
    parent = (folder / name).parent
    while parent != folder and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _remove_legacy_debris(folder: Path, existed: bool) -> None:
    """Staging and set-aside copies that mrl_hf < 0.2 wrote beside a folder (``.NAME.tmp-*``, ``.NAME.old-*``). A
    set-aside copy is kept when the folder itself was missing: then it is the last checkpoint there was."""
    prefixes = (f".{folder.name}.tmp-", f".{folder.name}.old-") if existed else (f".{folder.name}.tmp-",)
    try:
        siblings = list(folder.parent.iterdir())
    except OSError:  # a parent we may not list (a mount point's): nothing of ours can be there either
        return
    for entry in siblings:
        rest = entry.name[len(prefixes[0]):] if entry.name.startswith(prefixes) else None
        if rest is not None and entry.is_dir() and rest.isalnum():  # exactly NAME's: not ``NAME.v2``'s
            shutil.rmtree(entry, ignore_errors=True)


def recover(folder: str | os.PathLike) -> None:
    """Finish an interrupted save in ``folder`` and remove what a killed save left there (needs write access)."""
    folder = Path(folder)
    with _locked(folder, exclusive=True):
        _finish_commit(folder)


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Around a load from a local folder: finish an interrupted save there (when the folder is writable) and hold a
    shared lock, so that no save commits while the files are read. A no-op for anything but a local folder."""
    folder = Path(path)
    if not folder.is_dir():
        yield
        return
    if any(p.name.startswith((STAGING_PREFIX, JOURNAL_FILE)) or p.name.endswith(".json.tmp") and
           p.name.startswith(MANIFEST_PREFIX) for p in folder.iterdir()):
        _recover_if_idle(folder)
    with _locked(folder, exclusive=False):
        yield


def _recover_if_idle(folder: Path) -> None:
    """Finish an interrupted commit and remove a killed save's staging folder, unless a save is running (it will)."""
    if fcntl is None:
        return
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if (folder / JOURNAL_FILE).exists():
            raise SaveError(exc.errno, f"{str(folder)!r} holds an interrupted save ({JOURNAL_FILE}) that could not be "
                                       f"finished ({exc}); open the folder once with write access so it completes") \
                from exc
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a save holds the folder: it finishes any earlier commit itself
        os.close(fd)
        return
    try:
        _finish_commit(folder)
    finally:
        os.close(fd)


# ---- saving a set of files -------------------------------------------------------------------------------------

def _manifest(folder: Path, owner: str) -> list[str]:
    path = folder / f"{MANIFEST_PREFIX}{owner}.json"
    try:
        return list(json.loads(path.read_text(encoding="utf8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _other_owners(folder: Path, owner: str) -> dict[str, str]:
    files = {}
    for path in folder.glob(f"{MANIFEST_PREFIX}*.json"):
        other = path.name[len(MANIFEST_PREFIX):-len(".json")]
        if other != owner:
            files.update({name: other for name in _manifest(folder, other)})
    return files


def _staged_files(staging: Path) -> list[str]:
    return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file() or p.is_symlink())


@contextlib.contextmanager
def owned_files(folder: str | os.PathLike, owner: str, *,
                replaces: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Stage the files of one save of ``owner`` into ``folder`` and commit them as a set (see the module docstring).

    ``replaces``: names of files in ``folder`` that no manifest lists (written by something else, e.g. a plain
    transformers save) which this save makes stale and deletes, e.g. weight shards of an older layout.
    """
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{str(folder)!r} is a file; save to a folder path.")
    existed = folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(exc.errno, f"cannot create the folder {str(folder)!r} to save the {owner} in ({exc}); "
                                   "choose a writable path") from exc
    with _locked(folder, exclusive=True):
        _finish_commit(folder)
        _remove_legacy_debris(folder, existed)
        staging = folder / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir()
        except OSError as exc:
            raise SaveError(exc.errno, f"cannot write into {str(folder)!r} ({exc}); nothing there was changed. "
                                       "Make the folder writable or save elsewhere") from exc
        try:
            yield staging
            files = _staged_files(staging)
            _check_names(folder, owner, files)
            mode = _default_file_mode()
            for name in files:
                if not (staging / name).is_symlink():
                    os.chmod(staging / name, mode)  # what open() gives (safetensors writes 0600 files)
                    _fsync(staging / name)
            _fsync(staging, directory=True)
            previous = set(_manifest(folder, owner))
            stale = previous - set(files)
            if replaces is not None:
                owned = set(_other_owners(folder, owner)) | previous | set(files)
                stale |= {p.name for p in folder.iterdir()
                          if p.is_file() and p.name not in owned and not _is_internal(p.name) and replaces(p.name)}
            _write_json(folder / JOURNAL_FILE, {"owner": owner, "staging": staging.name, "files": files,
                                                "delete": sorted(stale)})
            _fsync(folder, directory=True)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, SaveError):
                raise SaveError(exc.errno, f"saving the {owner} into {str(folder)!r} failed ({exc}); the files "
                                           "that were there are unchanged. Free disk space or fix the path and save "
                                           "again") from exc
            raise
        _finish_commit(folder)  # after the commit point: the same code a later recovery runs


def _check_names(folder: Path, owner: str, files: list[str]) -> None:
    clash = {name: other for name, other in _other_owners(folder, owner).items() if name in files}
    if clash:
        name, other = next(iter(clash.items()))
        raise FileExistsError(f"{str(folder / name)!r} belongs to the {other} saved in this folder; saving this "
                              f"{owner} there would replace it. Save the {owner} to another folder.")
    internal = [name for name in files if _is_internal(Path(name).name)]
    if internal:
        raise ValueError(f"{internal[0]!r} is a name mrl_hf keeps for its own bookkeeping; rename the file.")


# ---- single files ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _temp_file_beside(path: Path, suffix: str) -> Iterator[str]:
    """Yield a new temporary file name beside ``path``; on success fsync it and rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _default_file_mode())
    try:
        yield tmp
        _fsync(Path(tmp))
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """``open`` a temporary file beside ``path``; on success it is fsynced and renamed onto ``path``."""
    with _temp_file_beside(Path(path), ".tmp") as tmp, open(tmp, mode, **open_kwargs) as handle:
        yield handle


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """For writers that take a file name (``plt.savefig``, ``torch.save``): ``write(tmp_name)`` then rename."""
    path = Path(path)
    with _temp_file_beside(path, path.suffix or ".tmp") as tmp:
        write(tmp)


# ---- the models' save_pretrained / from_pretrained ---------------------------------------------------------------

WEIGHT_PREFIXES = ("model", "pytorch_model", "tf_model", "flax_model", "adapter_model")


def is_weight_file(name: str) -> bool:
    """A weights file or shard index of any transformers layout (what a new model save makes stale)."""
    return name.startswith(WEIGHT_PREFIXES) and (".safetensors" in name or name.endswith(
        (".bin", ".h5", ".msgpack", ".bin.index.json", ".h5.index.json", ".msgpack.index.json")))


def missing_checkpoint_error(path) -> FileNotFoundError | None:
    """For a path that looks like a local folder but is not there: an error naming it (instead of transformers'
    "Repo id must be in the form ..."), and any set-aside copy an interrupted save of mrl_hf < 0.2 left beside it."""
    text = os.fspath(path)
    if os.path.exists(text):
        return None
    if not (os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text):
        return None  # could be a Hub id ("namespace/name"): transformers says what it found there
    folder = Path(text).absolute()
    hint = ""
    if folder.parent.is_dir():
        old = sorted(p.name for p in folder.parent.glob(f".{folder.name}.old-*") if p.is_dir())
        if old:
            hint = (f" An interrupted save left the previous checkpoint in {str(folder.parent / old[-1])!r}: "
                    f"rename it to {folder.name!r}.")
    return FileNotFoundError(f"{text!r} does not exist; pass a folder written by save_pretrained or a Hub model id."
                             + hint)
