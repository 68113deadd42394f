import sys

from cocoattr.cli import main

sys.exit(main())
