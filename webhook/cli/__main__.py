"""`python -m webhook.cli`: the `wi-webhook` command without its console script (tests, workers)."""

import sys

from webhook.cli.main import main

sys.exit(main())
