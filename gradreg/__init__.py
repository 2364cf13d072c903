"""gradreg: gradient regularization — input-gradient (Varga et al.) and parameter-gradient
(Karakida et al.) regularizers, the models and data of their experiments, one training loop, an
experiment registry with smoke/cpu/paper profiles and a results store. See the book for the story.
"""
from . import data, experiments, losses, models, regularizers, results
from .errors import GradregError
from .train import TrainConfig, train

__all__ = ["GradregError", "TrainConfig", "data", "experiments", "losses", "models", "regularizers",
           "results", "train"]
__version__ = "0.1.0"
