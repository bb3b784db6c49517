import signal
import sys

from ml60.cli import main

if hasattr(signal, "SIGPIPE"):   # `make diff M=... | head` ends quietly, as other command-line tools do
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
sys.exit(main())
