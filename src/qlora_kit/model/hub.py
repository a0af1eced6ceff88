"""Telling a local path from a Hugging Face hub id, and failing fast when a hub id cannot be had.

transformers sends any name that is not an existing directory to the hub, and `huggingface_hub`
retries a download that cannot connect five times with back-off: a mistyped local path took 49 s
and ended in a 40-line traceback. Here a name that cannot be a hub id is a local path (never sent to
the hub), a hub id found in the local cache is used as is, and any other hub id is probed with one
request, without retries, before transformers is asked to download it.
"""

from __future__ import annotations

from qlora_kit.errors import ModelLoadError, first_line

OFFLINE_HINT = "set HF_HUB_OFFLINE=1 to use only the local Hugging Face cache"
_PROBE_TIMEOUT_S = 10


def is_hub_id(name: str) -> bool:
    """Whether ``name`` could be a hub repository id (``name`` or ``org/name``, hub characters only).

    Names starting with ``.``, ``/`` or ``~``, with two or more ``/``, a backslash or a space, and
    anything else the hub does not accept as a repository id are local paths.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def offline() -> bool:
    """Whether `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) forbids downloads in this process."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_hub_id(
    repo_id: str,
    field: str,
    *,
    filename: str = "config.json",
    require_file: bool = True,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> None:
    """Make sure transformers can get ``repo_id``: it is cached, or the hub answers for it now.

    Args:
        repo_id: the hub id, e.g. ``distilbert/distilgpt2``.
        field: the config field that named it (for the message), e.g. ``model.name_or_path``.
        filename: a file such a repository has (``config.json`` for models), looked up in the cache.
        require_file: whether a repository without ``filename`` is an error (else only the
            repository must exist).
        revision: the `model.revision`.
        cache_dir: the `model.cache_dir` (default: the hub cache).

    Raises:
        ModelLoadError: not cached and offline, not on the hub (or gated, or without ``filename``), or
            the hub cannot be reached. One line, saying what to do.
    """
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str):
        return
    where = f"no local directory {repo_id!r} and {repo_id!r} is not in the Hugging Face cache"
    if offline():
        raise ModelLoadError(f"{field}: {where}, and HF_HUB_OFFLINE=1 forbids downloading it")
    problem = _probe(repo_id, filename, revision, require_file)
    if problem is not None:
        raise ModelLoadError(f"{field}: {where}; {problem}")


def _probe(repo_id: str, filename: str, revision: str | None, require_file: bool) -> str | None:
    """What stops a download of ``filename`` from ``repo_id`` (one request, no retries), or None."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), timeout=_PROBE_TIMEOUT_S)
    except GatedRepoError:  # before RepositoryNotFoundError: it is a subclass
        return "it is gated on the hub: accept its terms on huggingface.co, then run `hf auth login`"
    except RepositoryNotFoundError:
        return "the hub has no such model (a private one needs `hf auth login`); check the name or path"
    except RevisionNotFoundError:
        return f"the hub has no revision {revision!r} of it (model.revision)"
    except EntryNotFoundError:
        return f"the hub repository has no {filename} (not a transformers model)" if require_file else None
    except Exception as exc:  # network errors come from httpx, OSError, or the hub's HTTP errors
        return (
            f"the hub cannot be reached ({type(exc).__name__}: {first_line(exc)}); connect, or {OFFLINE_HINT}"
        )
    return None
