"""The errors that mean "the input is wrong" (printed as one line by the jobs), as opposed to bugs.

NonFiniteLoss is among them: a run that diverges is fixed by its config (lr, clipping,
warmup); raylg.cli.fail prints it with a hint and exits 1, since the run had started."""

from raylg.checkpoint import CheckpointError
from raylg.config import ConfigError
from raylg.data import DataError
from raylg.engine import NonFiniteLoss
from raylg.features.errors import FeatureError
from raylg.fit import ResumeError
from raylg.models import ModelError
from raylg.teacher import TeacherError

USER_ERRORS = (ConfigError, DataError, ModelError, TeacherError, CheckpointError, ResumeError, FeatureError, FileNotFoundError,
               NonFiniteLoss)
