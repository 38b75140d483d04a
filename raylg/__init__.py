"""raylg: locality-guided vision transformers on small datasets, trained and swept on Ray.

The core (config, data, models, guidance, task, engine) is plain PyTorch; Ray, MLflow and
S3 live at the edge (raylg.ray, raylg.tracking, raylg.storage).
"""

import time as _time

__version__ = "0.1.0"
IMPORT_STARTED = _time.time()  # when this process began importing raylg (raylg.timing: a trial's start-up breakdown)
