import sys

from lsgm.cli import main

sys.exit(main())
