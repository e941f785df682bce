import sys

from tood_ablate.cli import main

sys.exit(main())
