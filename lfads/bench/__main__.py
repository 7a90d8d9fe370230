import sys

from lfads.bench.benchmark import main

sys.exit(main())
