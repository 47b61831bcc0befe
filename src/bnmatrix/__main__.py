import sys

from bnmatrix.cli import main

sys.exit(main())
