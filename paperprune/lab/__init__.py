"""The lab: the experiments around the library (data, training, run records, pruning curves,
statistics over seeds, reports, the reproduction profiles and the command line).

It imports `paperprune`; `paperprune` never imports it.
"""
