"""realtime: a push server driven by MongoDB change streams."""

__version__ = "0.1.0"
