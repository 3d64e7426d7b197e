"""sensorwire's benchmark suite: sensorwire against the transports users would pick instead.

``python -m bench`` (or ``make bench``) runs it; ``bench/README.md`` explains
the columns.  Layout:

* :mod:`bench.workload` - the frame every transport carries;
* :mod:`bench.transports` - one plug-in per row (``sensorwire_path`` is the
  product's own code path);
* :mod:`bench.harness` - the trials (max, lossless, latency) over
  :mod:`bench.worker`'s publisher and subscriber processes;
* :mod:`bench.ceilings` - what no row can beat on this machine;
* :mod:`bench.report` and :mod:`bench.cli` - the table.
"""
