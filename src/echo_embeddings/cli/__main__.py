"""``python -m echo_embeddings.cli``: the same as the ``echo-embeddings`` command."""

from .main import main

raise SystemExit(main())
