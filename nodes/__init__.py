"""ComfyUI nodes of the UCE pack: thin adapters from ComfyUI objects to uce_solver."""

from .calibrated_debias import UCEDebiasCalibrated
from .classifier import UCEClassifierLoader
from .debias import UCEDebias
from .erase import UCEEraseConcepts, UCEModerate
from .probe import UCEProbe
from .save_edit import UCESaveEdit

NODES = (UCEEraseConcepts, UCEModerate, UCEDebias, UCEProbe, UCESaveEdit, UCEDebiasCalibrated, UCEClassifierLoader)
NODE_CLASSES = {node.GET_SCHEMA().node_id: node for node in NODES}  # node id -> class, as ComfyUI registers them
