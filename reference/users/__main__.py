"""``python -m reference.users``."""

from reference.common.service import run
from reference.users.service import build

run(build)
