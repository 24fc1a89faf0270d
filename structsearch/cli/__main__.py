"""``python -m structsearch.cli`` (same as the ``structsearch`` console script)."""

from structsearch.cli import main

main()
