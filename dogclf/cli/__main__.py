"""``python -m dogclf.cli``: the ``dogclf`` command."""

import sys

from dogclf.cli import main

sys.exit(main())
