import sys

from bisenet_ros.cli import main

sys.exit(main())
