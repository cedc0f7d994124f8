"""Make sure Numba can cache minilr's kernels before they are compiled (``cache=True``).

Numba writes its cache next to the source (``minilr/__pycache__``) or in the user's cache folder
(``~/.cache/numba``). On a read-only install with a read-only (or missing) home neither works, and
``@numba.njit(cache=True)`` then raises "cannot cache function ...: no locator available" at
import. This module, run first by ``minilr/__init__.py``, asks Numba's own locators whether one
works for a file in this package; if none does and the user set no ``NUMBA_CACHE_DIR``, it points
Numba at a private folder in the system temp dir (the cache then lives there).
"""
from __future__ import annotations

import os
import stat
import tempfile


def _probe():  # a function in this package's folder: where the kernels' sources live
    return None


def _writable(folder) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def _some_locator_works() -> bool:
    from numba.core import caching, config

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if classes is None:  # a Numba without this internal: its usual places, by hand
        home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        places = [config.CACHE_DIR] if config.CACHE_DIR else []
        places += [os.path.join(os.path.dirname(__file__), "__pycache__"), os.path.join(home, "numba")]
        return any(_writable(p) for p in places)
    for cls in classes:
        try:
            if cls.from_function(_probe, __file__) is not None:
                return True
        except Exception:  # a locator that cannot even look counts as not working
            continue
    return False


def _private_dir() -> str:
    """``<tmp>/minilr-numba-cache-<uid>``, ours alone (mode 0700, owned by us); else a fresh one.

    A cache folder someone else can write to would let them plant compiled code: never use one.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    path = os.path.join(tempfile.gettempdir(), f"minilr-numba-cache-{uid if uid is not None else 'user'}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="minilr-numba-cache-")
    st = os.lstat(path)
    if (not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid)
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        return tempfile.mkdtemp(prefix="minilr-numba-cache-")
    return path


def ensure() -> None:
    """Give Numba a writable cache folder if it has none (see the module docstring)."""
    from numba.core import config

    if _some_locator_works():  # NUMBA_CACHE_DIR, if set and writable, is the first locator
        return
    try:
        path = _private_dir()
    except OSError as exc:
        raise ImportError(f"Numba has no writable cache folder for minilr's compiled kernels (the "
                          f"package folder, the home folder and the temp folder are read-only): set "
                          f"NUMBA_CACHE_DIR to a writable folder ({exc})") from None
    # the environment too: Numba re-reads it (config.reload_config) before each compilation
    os.environ["NUMBA_CACHE_DIR"] = path
    config.CACHE_DIR = path
