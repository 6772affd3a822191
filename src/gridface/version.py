"""The package version, in a leaf module: ``gridface.contract`` records it in every exported model's metadata
without importing the package's ``__init__`` (which reaches the inference code lazily)."""

__version__ = "0.1.0"
