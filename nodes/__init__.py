"""ComfyUI nodes of the UCE pack: thin adapters from ComfyUI objects to uce_solver."""

from .debias import UCEDebias
from .erase import UCEEraseConcepts, UCEModerate

NODE_CLASS_MAPPINGS = {
    "UCEEraseConcepts": UCEEraseConcepts,
    "UCEModerate": UCEModerate,
    "UCEDebias": UCEDebias,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "UCEEraseConcepts": "UCE Erase Concepts",
    "UCEModerate": "UCE Moderate",
    "UCEDebias": "UCE Debias",
}
