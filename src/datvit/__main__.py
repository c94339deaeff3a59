"""``python -m datvit`` (and ``torchrun -m datvit train ...``): the ``datvit`` command line."""

import sys

from datvit.cli.main import main

sys.exit(main())
