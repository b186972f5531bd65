import sys

from housegan.cli import main

sys.exit(main())
