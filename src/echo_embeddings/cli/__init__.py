"""The command line, one module a command: ``embed`` (``embed.py``), ``evaluate`` (``evaluate.py``),
``fit-whitening`` (``whitening.py``), ``serve`` (``serve.py``) and ``train`` (``train.py``); ``main.py``
assembles them. Every command reads its files and checks its arguments before any model work.
"""

from .main import main, parser

__all__ = ["main", "parser"]
