"""`python -m ephemerid.cli`: the same as `eph`."""

from ephemerid.cli import main

main()
