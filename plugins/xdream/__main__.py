"""``python -m stimopt_plugins.xdream encode IMAGES_DIR OUT.npy [overrides]``."""
import sys

from stimopt_plugins.xdream.encoding import main

sys.exit(main())
