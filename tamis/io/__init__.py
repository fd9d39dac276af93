"""Input and output: the validated :class:`~.store.Store`, the readers that build one
(:mod:`.readers`, one module per format, each serving the local and the Dask scan), the one
label encoder (:mod:`.labels`), ``knn.npz`` (:mod:`.knn_file`) and the only atomic writers
(:mod:`.atomic`)."""
