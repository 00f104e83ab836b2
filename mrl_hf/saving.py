"""Atomic saves: a crash or an error while saving never leaves a half-written checkpoint where a good one stood.

``atomic_directory(path)`` yields a fresh staging directory beside ``path`` (same filesystem); when the block
ends without error the staged files are fsynced and the staging directory is renamed onto ``path`` (an existing
``path`` is first renamed aside, then deleted). On an error the staging directory is removed and ``path`` is
untouched. ``atomic_file(path)`` does the same for one file. ``AtomicSaveMixin`` makes ``save_pretrained`` of
every mrl_hf model go through ``atomic_directory``.

A crash between the two renames leaves the old checkpoint complete under ``.NAME.old-*`` beside ``path``
(never a mix of old and new files); ``recover_interrupted_save(path)`` puts it back.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

# Files that a new save replaces as a set; anything else already in the target folder (optimizer state, logs,
# checkpoint-* subfolders of a Trainer output_dir) is carried over into the new folder by hard links.
_WEIGHT_PREFIXES = ("model", "pytorch_model", "tf_model", "flax_model", "adapter_model")


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves to disk."""
    for folder, _, names in os.walk(root):
        for name in names:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def _is_weight_file(name: str) -> bool:
    return name.startswith(_WEIGHT_PREFIXES) and (".safetensors" in name or name.endswith((".bin", ".h5", ".msgpack")))


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            _link_or_copy_tree(entry, target)
            continue
        try:
            os.link(entry, target, follow_symlinks=False)
        except OSError:  # no hard links on this filesystem
            shutil.copy2(entry, target, follow_symlinks=False)


def _carry_over(old: Path, staged: Path, keep: Callable[[str], bool]) -> None:
    for entry in old.iterdir():
        if (staged / entry.name).exists() or not keep(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            _link_or_copy_tree(entry, staged / entry.name)
        else:
            try:
                os.link(entry, staged / entry.name, follow_symlinks=False)
            except OSError:
                shutil.copy2(entry, staged / entry.name, follow_symlinks=False)


def _swap_in(staged: Path, path: Path) -> None:
    if not path.exists():
        os.rename(staged, path)
    else:
        # rename(2) cannot replace a non-empty directory: move the old one aside, then put the new one in place.
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
        try:
            os.rename(staged, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_path(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, keep_existing: Callable[[str], bool] | bool = False,
                     ) -> Iterator[Path]:
    """Stage a directory that replaces ``path`` only if the ``with`` block finishes without an exception.

    ``keep_existing``: entries of an existing ``path`` (by name) to carry into the new directory when the new
    save did not write a file of that name; ``True`` keeps all of them, a callable decides per name.
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is a file; save to a directory path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield staged
        if keep_existing and path.is_dir():
            _carry_over(path, staged, keep_existing if callable(keep_existing) else (lambda name: True))
        fsync_tree(staged)
        _swap_in(staged, path)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def write_dir_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(staging_dir)`` and swap the result in for ``path`` (see ``atomic_directory``)."""
    with atomic_directory(path) as staged:
        write(staged)
    return Path(path)


@contextlib.contextmanager
def _temp_file_beside(path: Path, suffix: str) -> Iterator[str]:
    """Yield the name of a new temporary file beside ``path``; on success fsync it and rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        _fsync_path(Path(tmp))
        os.replace(tmp, path)
        _fsync_path(path.parent)
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


def leftover_staging_dirs(path: str | os.PathLike) -> list[Path]:
    """Staging / set-aside folders of ``path`` that an interrupted save left behind (for cleanup or recovery)."""
    path = Path(path).absolute()
    return sorted(p for p in path.parent.glob(f".{path.name}.*") if p.is_dir())


def recover_interrupted_save(path: str | os.PathLike) -> Path | None:
    """If a crash struck between moving the old checkpoint aside and moving the new one in, ``path`` is missing
    and the old, complete checkpoint sits in ``.NAME.old-*``: move it back. Returns the restored path or None."""
    path = Path(path).absolute()
    if path.exists():
        return None
    olds = [p for p in leftover_staging_dirs(path) if ".old-" in p.name]
    if not olds:
        return None
    os.rename(max(olds, key=lambda p: p.stat().st_mtime), path)
    return path


class AtomicSaveMixin:
    """Put before the ``PreTrainedModel`` base: ``save_pretrained(dir)`` writes into a staging folder beside
    ``dir`` and swaps it in at the end, so an exception or a crash mid-save leaves the previous checkpoint intact.
    ``from_pretrained`` turns safetensors' error on a truncated or corrupt weights file into a ``ValueError``
    that names the folder and the fix.

    Files the new save does not write (optimizer state, ``checkpoint-*`` folders of a Trainer output_dir, ...)
    are carried over, except stale weight files (``model*.safetensors`` shards and their index), which a save
    replaces as a set. Subclasses add their own files (tokenizer, processor) in ``_save_extra_files``.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from safetensors import SafetensorError

        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as exc:
            raise ValueError(f"the safetensors weights in {str(pretrained_model_name_or_path)!r} are truncated or "
                             f"corrupt ({exc}); restore the checkpoint from a good copy (mrl_hf saves are atomic, "
                             "so a crashed save never causes this) or re-save the model.") from exc

    def _save_extra_files(self, save_directory: str) -> None:
        """Write files that belong with the weights (tokenizer, processor) into ``save_directory``."""

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        if not is_main_process:  # only the main process writes; others may still take part in gathering weights
            return super().save_pretrained(save_directory, *args, is_main_process=False, **kwargs)
        target = Path(save_directory).absolute()
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", target.name)
        with atomic_directory(target, keep_existing=lambda name: not _is_weight_file(name)) as staged:
            result = super().save_pretrained(str(staged), *args, **kwargs)
            self._save_extra_files(str(staged))
        return result


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` when it is not a complete safetensors file (truncated, corrupt)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                handle.get_slice(key)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a valid safetensors file ({exc}); it is truncated or corrupt. Restore it "
                         "from a good copy or re-save the model.") from exc
