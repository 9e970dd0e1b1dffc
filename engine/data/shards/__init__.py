"""Reading shards: the manifest, where shards live, and the loader that streams them.

:mod:`.manifest` reads and checks ``dataset.json`` (with :mod:`.normalize`, the input
contract it defines); :mod:`.store` opens a shard in a folder or at a URL, remote bytes
arriving through :mod:`.remote_stream` (deadlines, conditional re-opens) with errors from
:mod:`.remote_errors`; :mod:`.loader` streams batches to every rank, local ``npy`` shards
straight into batch memory by :mod:`.direct_read`, member headers parsed by
:mod:`.npy_member` and every sample checked by :mod:`.checks`; :mod:`.verify` checks
shards against the manifest's digests.
"""
