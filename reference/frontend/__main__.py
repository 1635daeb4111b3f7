"""``python -m reference.frontend``."""

from reference.frontend.service import main

main()
