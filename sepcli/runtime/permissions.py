"""File modes of the model folders sepcli writes.

Model folders are assembled in a temporary sibling folder and renamed into place. `tempfile.mkdtemp` creates that
folder with mode 0700 and safetensors' `save_file` writes its file with 0600, so without a fix a model written by
one user is unreadable to every other user of the machine. `apply_default_modes(folder)` gives the folder and
the files directly in it the modes an ordinary `mkdir` / `open` would give them under the user's umask (0755 and
0644 with the usual umask 022; 0700 and 0600 under umask 077): call it on the temporary folder before renaming
it into place.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def apply_default_modes(folder: Path) -> None:
    """chmod `folder` to 0777 and its regular files to 0666, both less the umask (symlinks are left alone)."""
    mask = current_umask()
    folder = Path(folder)
    for entry in folder.iterdir():
        st = entry.lstat()
        if stat.S_ISREG(st.st_mode):
            os.chmod(entry, 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)
