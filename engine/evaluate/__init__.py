"""The evaluation stage: metrics, and models scored on shards or on mask folders.

Confusion matrices and metrics (:mod:`.metrics`), a model over a shard split, exactly once
across ranks (:mod:`.shard_eval`), predicted mask folders against truth folders
(:mod:`.folder_eval`), and written reports (:mod:`.report`). Training calls it for
validation; it never imports training or inference.
"""
