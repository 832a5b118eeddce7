"""``python -m obrolan`` runs the ``obrolan`` command."""

import sys

from obrolan.cli.main import main

sys.exit(main())
