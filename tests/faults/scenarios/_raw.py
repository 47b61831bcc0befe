"""Hostile result lines: the `ok` scenario's real result, edited as data, printed as the last result line (the one
that counts), with numbers no JSON encoder writes (1e400) spelled out as text."""
import io
import json
import sys

import bnmatrix_scenario as bns
import ok


def main(name, edit):
    real, sys.stdout = sys.stdout, io.StringIO()
    try:
        bns.main(name, ok.train)
        line = sys.stdout.getvalue().split(bns.RESULT_MARKER, 1)[1]
    finally:
        sys.stdout = real
    text = json.dumps(edit(json.loads(line))).replace('"<1e400>"', "1e400")
    sys.stdout.write(bns.RESULT_MARKER + text.replace('"<deep>"', "[" * 100000 + "]" * 100000) + "\n")
