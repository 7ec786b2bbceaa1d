"""sepcli: split a recording of overlapping talkers into one file per speaker."""

__version__ = "0.1.0"

__all__ = ["Separator", "__version__"]


def __getattr__(name):  # lazy: `import sepcli` stays cheap (no torch import)
    if name == "Separator":
        from .separate import Separator

        return Separator
    raise AttributeError(name)
