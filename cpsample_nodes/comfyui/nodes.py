"""The CPSample nodes ComfyUI lists, V3 schema (comfy_api.latest), category "CPSample", one module per job.

Node ids are stable (workflows store them): CPSampleTrainGuard, CPSampleTrainGuardWithClassImages
(train_nodes.py), CPSampleSaveGuard, CPSampleLoadGuard (guard_file_nodes.py), CPSampleProtectModel
(protect_node.py), CPSampleReplicationCheck (replication_node.py), CPSampleCalibrateGuard (calibrate_node.py).
"""
from __future__ import annotations

from .calibrate_node import CalibrateGuard
from .guard_file_nodes import LoadGuard, SaveGuard
from .protect_node import ProtectModel
from .replication_node import ReplicationCheck
from .train_nodes import TrainGuard, TrainGuardWithClassImages

NODES = [TrainGuard, TrainGuardWithClassImages, SaveGuard, LoadGuard, ProtectModel, ReplicationCheck, CalibrateGuard]
