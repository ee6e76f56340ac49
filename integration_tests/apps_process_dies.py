"""A module whose import kills the process: the child dies before it can report anything."""

import os
import sys

sys.stdout.write("about to die during import\n")
sys.stdout.flush()
os._exit(7)
