"""Container image references pinned by digest: ``name:tag@sha256:<64 hex>``.

A tag alone can be moved to other bytes; the digest cannot. Base images given to builds (the Bento's
``docker.base_image``, the CI container) must therefore carry both: the tag says what it is, the digest fixes
what runs. The GitHub workflows check the same form in bash (:data:`PINNED_IMAGE_ERE`).
"""

from __future__ import annotations

import re

# POSIX extended regex (also used by the workflows' `[[ $ref =~ ... ]]`): registry/path components, a tag, a
# sha256 digest. Lower-case names and hex as Docker requires.
PINNED_IMAGE_ERE = (
    r"^[a-z0-9]+([._-]+[a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}@sha256:[0-9a-f]{64}$"
)
_PINNED = re.compile(PINNED_IMAGE_ERE)


class ImageRefError(ValueError):
    """An image reference is not pinned as ``name:tag@sha256:<64 hex>``."""


def require_pinned_image(ref: str, what: str = "image") -> str:
    """``ref`` stripped, if it is ``name:tag@sha256:<64 hex>``; :class:`ImageRefError` saying why otherwise."""
    value = (ref or "").strip()
    if _PINNED.match(value):
        return value
    if not value:
        problem = "is empty"
    elif "@sha256:" not in value:
        problem = "has no @sha256: digest (a tag can be moved to other bytes; a digest cannot)"
    else:
        problem = "is not of the form name:tag@sha256:<64 lower-case hex>"
    raise ImageRefError(
        f"{what} {value!r} {problem}; give it as name:tag@sha256:<64 hex>, e.g. "
        "python:3.11-slim-bookworm@sha256:<digest from `docker buildx imagetools inspect`>"
    )
