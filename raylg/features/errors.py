"""The one error type of raylg.features."""


class FeatureError(ValueError):
    """Precomputed teacher features are missing, corrupt or do not fit the run; the message
    names the manifest or shard and what differs. No partial data is ever used."""
