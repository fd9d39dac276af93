"""Benchmark harness for tamis: synthetic stores with planted issues, and a runner that
scores tamis and its peers (faiss, cleanlab) on the same data in the same run.

Bench-only code: the ``tamis`` package never imports from here. Peers are listed in
``bench/requirements.txt``. See ``bench/README.md``.
"""
