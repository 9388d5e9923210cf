"""Writing safetensors files that others can read.

safetensors creates its files readable by their owner only (0600). A trace, a checkpoint or a model
folder is for sharing (with a class, a co-worker), so every file diffexplain writes gets the
permissions any new file gets instead (0644 under the usual umask), like the JSON beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def save_readable(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, keeping the permissions a new file gets under the umask.

    An existing file keeps its own permissions, as any rewrite would.
    """
    path = Path(path)
    path.touch()  # a new file gets the umask's permissions; an existing one keeps its own
    mode = path.stat().st_mode & 0o777
    save_file(tensors, str(path), metadata=metadata)
    path.chmod(mode)
