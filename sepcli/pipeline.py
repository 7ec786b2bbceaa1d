"""The former single module of the separation pipeline, kept so that `from sepcli.pipeline import ...` in
scripts and notebooks written against earlier versions keeps working. The code lives in the `sepcli.separate`
package (one module per concern); import from there in new code."""

from .separate import *  # noqa: F403
from .separate import __all__  # noqa: F401
from .separate.claim import _clean_after_dead_holder, _pid_alive  # noqa: F401
from .separate.results import _dropped_output, _existing_output, _finite, _Timer  # noqa: F401
from .separate.outputs import _lufs_gains, loudness_gains  # noqa: F401
from .separate.separator import _too_short  # noqa: F401
