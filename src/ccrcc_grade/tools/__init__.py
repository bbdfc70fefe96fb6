"""Tools around the pipeline: the phantom cohort generator (``synth``) and the benchmarks
(``bench``, ``bench_mem``)."""
