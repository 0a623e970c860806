"""affectpipe: frozen face backbones -> cached features -> shallow heads -> tuned blends."""

__version__ = "0.1.0"
