"""``python -m reference.payments``."""

from reference.common.service import run
from reference.payments.service import build

run(build)
