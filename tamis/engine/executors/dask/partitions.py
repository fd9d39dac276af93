"""The store as a Dask scan sees it: partitions, each a row range read by the store's reader.

:func:`open_partitioned` (from :mod:`tamis.io.readers`) gives the client's
:class:`~tamis.io.store.Store` -- the descriptive columns read whole, the embeddings left in
the store as a :class:`PartitionedMatrix` the client's light passes (validity,
normalisation, hashing) read one partition at a time -- and the partitions of about
``partition_rows`` rows the tasks read. Every registered format works (.npz, .npy, Parquet,
Arrow IPC / Feather); how a format cuts and reads its rows is its reader's business
(Parquet: whole row groups, from the footers).

A :class:`Partition` carries its reader, so :func:`read_partition` on a worker needs no
registry: it calls the reader, which converts the rows exactly as
:func:`tamis.io.readers.load_store` converts the whole column, so a worker that reads
partition ``i`` sees rows ``row0 .. row0 + n_rows`` of the store bit for bit.
"""

from __future__ import annotations

import numpy as np

from ....io.readers import Partition, PartitionedMatrix, open_partitioned


def read_partition(part: Partition, column: str, dim: int) -> np.ndarray:
    """The raw embeddings of ``part`` (column ``column``): an (n_rows, dim) matrix, NaN rows for nulls."""
    return part.reader.read_partition(part, column, dim)


__all__ = ["Partition", "PartitionedMatrix", "open_partitioned", "read_partition"]
