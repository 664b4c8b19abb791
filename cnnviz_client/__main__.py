"""``python -m cnnviz_client``: the ``cnnviz`` command."""

from cnnviz_client.cli import main

raise SystemExit(main())
