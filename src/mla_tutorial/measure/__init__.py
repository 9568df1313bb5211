"""Measuring the ladder: everything that times, counts, plots or prints, kept out of the lesson's files.

One module per concern; a stage file holds only its stage, `tour.py` only the tour.

    kernel_bench   the Triton kernel benchmark (`python -m mla_tutorial bench --kernel`)
"""
