"""Self-supervised pretraining of the epoch encoders: NeuroNet, SynthSleepNet and MC2SleepNet.

Each method is an objective module (``forward(x, mask) -> (loss, metrics)``) around a
:class:`~rtsleep.models.SleepNet`; :func:`offline.pretrain.run.pretrain` trains one on a store and
writes an rtsleep checkpoint whose encoder is pretrained (temporal module and heads untrained).
"""
