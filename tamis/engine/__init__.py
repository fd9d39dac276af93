"""The compute engine: the backend (``xp`` chosen once), the run context and its shared
artefacts (:mod:`.artifacts`: pairs and the neighbour graph), the one similarity search
(:mod:`.search`), the executors that run it here or on Dask (:mod:`.executors`), the map
(:mod:`.projection`) and progress bars."""
