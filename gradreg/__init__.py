"""gradreg: gradient regularization — input-gradient (Varga et al.) and parameter-gradient
(Karakida et al.) regularizers, the models and data of their experiments, one training loop, an
experiment registry with smoke/cpu/paper profiles and a results store. See the book for the story.
"""
import sys as _sys

try:
    from . import data, experiments, losses, models, paramgr, regularizers, results
    from .errors import GradregError
    from .config import TrainConfig
    from .train import train
    from . import cli as _cli  # noqa: F401  (loaded here too, so Ctrl-C while it loads is caught below)
except KeyboardInterrupt:
    # Ctrl-C while the `gradreg` command is still importing torch: end like an interrupt inside the
    # command (one line, status 130), not with a traceback. A library import re-raises as usual.
    _argv0 = (_sys.argv or [""])[0]
    if _argv0 == "-m" or _argv0.replace("\\", "/").rsplit("/", 1)[-1] == "gradreg":
        print("gradreg: interrupted while starting", file=_sys.stderr, flush=True)
        import os as _os
        _os._exit(130)  # at once: finalising a half-imported torch can end in a second SIGINT (status -2)
    raise

__all__ = ["GradregError", "TrainConfig", "data", "experiments", "losses", "models", "regularizers",
           "results", "train"]
__version__ = "0.1.0"
