"""A scenario that never finishes: for the timeout and Ctrl-C tests (standard library only)."""
import time

time.sleep(3600)
