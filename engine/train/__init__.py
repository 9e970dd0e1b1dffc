"""The training stage: from a config and shards to checkpoints and an exported best model.

The experiment config (:mod:`.config`, checked by :mod:`.config_check`; the run folder and
data checked before training by :mod:`.preflight`), device augmentation and multitask
targets (:mod:`.augment`, :mod:`.targets`), losses (:mod:`.losses`, :mod:`.loss_factory`),
optimisers (:mod:`.optim`), and the loop (:mod:`.loop`) with its pieces: set-up
(:mod:`.setup`), one optimiser step (:mod:`.step`), validation and best-model export
(:mod:`.validate`, :mod:`.export`), checkpoints without pickle (:mod:`.checkpoint`,
:mod:`.state_io`), history and tracking (:mod:`.history`, :mod:`.tracking`), and stopping
(:mod:`.stopping`).
"""
