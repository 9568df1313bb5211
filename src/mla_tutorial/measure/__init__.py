"""Measuring the ladder: everything that times, counts, plots or prints, kept out of the lesson's files.

One module per concern; a stage file holds only its stage, `tour.py` only the tour.

    cost          what a decode step must move and compute (bytes, FLOPs), tokens/s, $ per million tokens
    timing        caches to time from, and the latency of one step (CUDA events, graphs, CPU perf_counter)
    memory        bytes a cache holds, peak memory of a step (CUDA counters, or a dispatch-mode tracker on CPU)
    roofline      the machine's measured ceilings (copy bandwidth, matmul rate) and its labels
    stage_bench   every stage at serving shapes (`python -m mla_tutorial bench`), with profiles
    kernel_bench  the Triton kernel benchmark (`python -m mla_tutorial bench --kernel`)
    capacity      sequences and context that fit in one GPU (`python -m mla_tutorial memory`)
    occupancy     registers, spills, shared memory, programs per SM of the compiled kernels
    plots, report figures and console tables
    cli           the command line (`python -m mla_tutorial ...`)
"""
