"""``python -m roost_cli``: the same as the ``roost`` command."""

from roost_cli.main import app

app()
