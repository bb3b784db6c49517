import sys

from ml60.cli import main

sys.exit(main())
