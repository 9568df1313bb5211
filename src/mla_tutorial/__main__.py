"""`python -m mla_tutorial {tour,bench,memory,roofline}`: the command line lives in `mla_tutorial.measure.cli`."""

from __future__ import annotations

from .measure.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
