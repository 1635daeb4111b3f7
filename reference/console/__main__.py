"""``python -m reference.console``."""

from reference.console import main

main()
