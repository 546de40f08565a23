"""Unified Concept Editing for ComfyUI: erase, moderate and debias concepts with a closed-form edit."""

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES

WEB_DIRECTORY = "./web"


class UCEExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> UCEExtension:
    return UCEExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
