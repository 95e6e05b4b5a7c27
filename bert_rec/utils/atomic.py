"""Kill-safe writes: every file or directory bert_rec writes appears whole or not at all.

A file is written to a temporary name beside its target and renamed over it
(:func:`write_text`); a directory (a checkpoint, a model) is built in a staging directory beside
its target and swapped in (:func:`staging_dir`, :func:`replace_dir`). On Linux the swap is one
``renameat2(RENAME_EXCHANGE)`` call, so a process killed at any moment leaves the complete old
version or the complete new one at the target; elsewhere it is two renames, and a kill between
them leaves the old version at ``.tmp-<target name>.old``, which the next write (or
:func:`recover`) puts back. Temporary names start with ``.tmp-<target name>-<pid>-``; what a
killed process left behind is removed by the next write to the same target
(:func:`remove_stale`). No TensorFlow here.
"""

import contextlib
import ctypes
import glob
import json
import os
import re
import shutil
import sys
import tempfile

TMP_PREFIX = ".tmp-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_TMP_TAIL = re.compile(r"(\d+)-[a-z0-9_]+")  # tempfile's random part has no "-"


def _tmp_prefix(path):
    """``.tmp-<name>-<pid>-``: the prefix of this process's temporary names for ``path``."""
    return f"{TMP_PREFIX}{os.path.basename(path)}-{os.getpid()}-"


def _pid_alive(pid):
    """Whether a process with this id exists (a reaped, killed writer does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(path):
    """Delete temporary files/directories for ``path`` left by writers that no longer run.

    Returns the paths removed. Temporaries of live processes (a concurrent writer) are kept.
    """
    path = os.path.abspath(path)
    head = TMP_PREFIX + os.path.basename(path) + "-"
    removed = []
    for tmp in glob.glob(os.path.join(os.path.dirname(path), glob.escape(head) + "*")):
        # "<pid>-<random>" exactly: not the temporaries of a target named "<name>-<suffix>"
        match = _TMP_TAIL.fullmatch(os.path.basename(tmp)[len(head):])
        if not match or int(match[1]) == os.getpid() or _pid_alive(int(match[1])):
            continue
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _unlink(tmp)
        removed.append(tmp)
    return removed


def _old_name(path):
    """Where the two-rename swap parks the old version: ``.tmp-<name>.old`` beside ``path``."""
    return os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{os.path.basename(path)}.old")


def recover(path):
    """Put the parked old version back at ``path`` if a two-rename swap was interrupted."""
    path = os.path.abspath(path)
    old = _old_name(path)
    if os.path.isdir(old):
        if os.path.exists(path):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, path)


def staging_dir(out_dir):
    """A fresh temporary directory beside ``out_dir`` (same file system, so renames are atomic).

    Stale staging directories of killed writers to the same target are removed first.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    recover(out_dir)
    remove_stale(out_dir)
    tmp = tempfile.mkdtemp(prefix=_tmp_prefix(out_dir), dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 -> what os.makedirs would have given
    return tmp


@contextlib.contextmanager
def staged_dir(out_dir, keep=()):
    """Build a directory in a staging folder and swap it in at ``out_dir`` when the block ends.

    ``with staged_dir(out) as tmp:`` write the files into ``tmp``; on normal exit ``tmp``
    replaces ``out`` (:func:`replace_dir`, carrying ``keep`` entries over), on an exception
    (or a kill) ``out`` is untouched and the staging folder is removed.
    """
    tmp = staging_dir(out_dir)
    try:
        yield tmp
        replace_dir(tmp, out_dir, keep=keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exchange(src, dst):
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE) == 0:
        return True
    return False  # e.g. EINVAL/ENOSYS: a file system or kernel without the flag


def link_tree(src, dst):
    """Copy directory ``src`` to ``dst`` with hard links (a plain copy across file systems)."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link)


def replace_dir(src, dst, keep=()):
    """Put directory ``src`` at ``dst``, replacing an existing ``dst``; return ``dst``.

    Entries of the old ``dst`` named in ``keep`` (e.g. a training-state folder) are carried into
    the new one as hard links first, so both versions hold them at every moment. A kill at any
    point leaves the complete old or the complete new directory at ``dst`` (see the module
    docstring for systems without an atomic exchange).
    """
    dst = os.path.abspath(dst)
    recover(dst)
    if not os.path.exists(dst):
        os.rename(src, dst)
        return dst
    for name in keep:
        old_entry, new_entry = os.path.join(dst, name), os.path.join(src, name)
        if os.path.exists(old_entry) and not os.path.exists(new_entry):
            if os.path.isdir(old_entry):
                link_tree(old_entry, new_entry)
            else:
                shutil.copy2(old_entry, new_entry)
    if _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old version
        return dst
    old = _old_name(dst)
    os.rename(dst, old)
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def write_text(path, text):
    """Write ``text`` (UTF-8; a string or an iterable of strings) to ``path`` via a temporary
    file beside it and an atomic rename."""
    chunks = [text] if isinstance(text, str) else text
    return _write(path, lambda f: f.writelines(chunk.encode("utf-8") for chunk in chunks))


def write_json(path, data):
    """Write ``data`` as indented UTF-8 JSON (non-ASCII kept as is), atomically."""
    return write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def write_bytes(path, data):
    """Write ``data`` (bytes, or an iterable of bytes chunks written as they come) to ``path``
    via a temporary file beside it and an atomic rename."""
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    return _write(path, lambda f: f.writelines(chunks))


def save_figure(fig, path, **savefig_kwargs):
    """Save a matplotlib figure as PNG at ``path``, atomically."""
    return _write(path, lambda f: fig.savefig(f, format="png", **savefig_kwargs))


def _write(path, fill):
    """Create a temporary file beside ``path``, ``fill(binary file)``, then rename it over."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    return path


def _umask():
    """The process umask (read without changing it for long)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _unlink(path):
    """Remove a file, ignoring one that is already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
