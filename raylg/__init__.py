"""raylg: locality-guided vision transformers on small datasets, trained and swept on Ray.

The core (config, data, models, guidance, task, engine) is plain PyTorch; Ray, MLflow and
S3 live at the edge (raylg.ray, raylg.tracking, raylg.storage).
"""

__version__ = "0.1.0"
