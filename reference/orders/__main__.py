"""``python -m reference.orders``."""

from reference.common.service import run
from reference.orders.service import build

run(build)
