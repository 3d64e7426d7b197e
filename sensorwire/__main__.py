import sys

from sensorwire.cli import main

sys.exit(main())
