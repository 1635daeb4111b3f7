"""``python -m reference.inventory``."""

from reference.common.service import run
from reference.inventory.service import build

run(build)
