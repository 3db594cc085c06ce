"""``python -m peakpilot.cli``: the same as the ``peakpilot`` command."""

from peakpilot.cli import main

main()
