"""rtsleep: real-time sleep scoring from polysomnography.

Folders follow the architecture:

- ``rtsleep.data``: readers -> preprocessing -> store (shared by training and the daemon).
- ``rtsleep.models``: encoders, temporal module (Mamba), heads, checkpoint.
- ``rtsleep.apnea``: ECG-derived and respiratory (AASM) apnea/hypopnea pathways.
- ``rtsleep.daemon``: inlet, epocher, scorer, publisher, lifecycle.
"""

__version__ = "0.1.0"
