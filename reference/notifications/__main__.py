"""``python -m reference.notifications``."""

from reference.common.service import run
from reference.notifications.service import build

run(build)
