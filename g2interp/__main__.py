import sys

from g2interp.cli import main

sys.exit(main())
