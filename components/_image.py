"""The container image every component runs in.

Read once, when ``components`` is imported (that is, at pipeline compile time): the
``MEDENS_IMAGE`` environment variable, default ``medens:<package version>``. The image must
hold medens and kfp (kfp is a medens dependency), so components install nothing at run time.
"""

from __future__ import annotations

import os

from medens import __version__

DEFAULT_IMAGE = f"medens:{__version__}"


def image_from_env() -> str:
    """``MEDENS_IMAGE`` if set and not empty, else :data:`DEFAULT_IMAGE`."""
    return os.environ.get("MEDENS_IMAGE", "").strip() or DEFAULT_IMAGE


IMAGE = image_from_env()
COMPONENT_OPTIONS = {"base_image": IMAGE, "install_kfp_package": False}
"""Keyword arguments of every ``@dsl.component``: the image, and no ``pip install kfp`` at start."""
