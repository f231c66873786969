"""CPSample guard core: pure torch, no host imports."""
from .calibration import Calibration, CalibrationStopped, calibrate
from .files import GuardFileError, load_guard, read_metadata, save_guard
from .guard import Guard
from .network import GuardConfig, GuardNet
from .noise import NoiseSpace
from .training import TrainingStopped, dataset_digest, random_labels, train_guard

__all__ = ["Calibration", "CalibrationStopped", "Guard", "GuardConfig", "GuardFileError", "GuardNet", "NoiseSpace",
           "TrainingStopped", "calibrate", "dataset_digest", "load_guard", "random_labels", "read_metadata",
           "save_guard", "train_guard"]
