"""Measuring what Triton serves: perf_analyzer runs, saved results and their reports, server
metrics, plots, in-process stages, cold starts, and `make bench`.

Layer: uses `tritonlab.serving` and `tritonlab.assets`; nothing below imports it.
"""
