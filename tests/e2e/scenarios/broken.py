"""A scenario that dies without a result: for the failure tests (standard library only)."""
import sys

sys.stderr.write("broken on purpose\n")
sys.exit(3)
