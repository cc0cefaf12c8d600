"""Is this string a Hugging Face hub repo id? One check for every place that takes "a local path or a hub id"."""

from __future__ import annotations

from pathlib import Path


def is_hub_id(text: str | Path) -> bool:
    """'owner/name' that huggingface_hub accepts as a repo id and that does not read as a local path ('./x', '/x',
    '~/x'). tinyvla always asks for the owner, so a bare 'name' is not one."""
    text = str(text)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True
