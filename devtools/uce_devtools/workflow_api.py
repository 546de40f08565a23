"""Turn a UI-format workflow (what ComfyUI saves and users share) into an API-format prompt.

The UI file is the one source of truth for each example workflow: tests and the demo derive the
API prompt (what `POST /prompt` takes) from it, using a running server's `/object_info` to know
which inputs are widgets and in which order their values sit in `widgets_values`.

Rules (as ComfyUI's frontend applies them when it queues a workflow):
- widget inputs are the INT / FLOAT / STRING / BOOLEAN / COMBO (a list of options or "COMBO")
  inputs that are not `forceInput`, in `input_order` (required, then optional);
- an INT / FLOAT / COMBO widget whose options carry `control_after_generate` is followed in
  `widgets_values` by one extra value ("fixed", "randomize", ...) that is not sent;
- an input that is linked takes the link, even when it is also a widget (a converted widget);
- Note / MarkdownNote nodes, and nodes that are muted (mode 2), are left out; bypassed nodes
  (mode 4) and Reroute nodes pass their input of the same type through; a PrimitiveNode gives its
  value to the inputs it feeds.
- widget values the server does not know (trailing values added by frontend extensions) are ignored.

Subgraphs (workflow "definitions") are not supported: a clear error says so.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_AFTER_GENERATE_TYPES = frozenset({"INT", "FLOAT", "COMBO"})
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
REROUTE_TYPES = frozenset({"Reroute"})
PRIMITIVE_TYPES = frozenset({"PrimitiveNode"})
UCE_CLASSES = frozenset({"UCEEraseConcepts", "UCEModerate", "UCEDebias"})
MODE_MUTED = 2
MODE_BYPASSED = 4


class WorkflowError(ValueError):
    """The UI workflow cannot be turned into an API prompt (unknown node, missing value …)."""


def load_workflow(path: str | Path) -> dict:
    """Read a UI-format workflow file."""
    with open(path, encoding="utf-8") as handle:
        workflow = json.load(handle)
    if not isinstance(workflow, dict) or "nodes" not in workflow or "links" not in workflow:
        raise WorkflowError(f"{path} is not a UI-format workflow (needs 'nodes' and 'links')")
    return workflow


def widget_names(node_info: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(input name, has a control_after_generate value) for each widget of a node, in widget order.

    `node_info` is one entry of `/object_info`.
    """
    inputs = node_info.get("input", {})
    order = node_info.get("input_order") or {section: list(inputs.get(section, {})) for section in ("required", "optional")}
    widgets = []
    for section in ("required", "optional"):
        declared = inputs.get(section) or {}
        for name in order.get(section, []):
            spec = declared.get(name)
            if spec is None:
                continue
            kind, options = _input_kind(spec)
            if kind not in WIDGET_TYPES or options.get("forceInput"):
                continue
            control = bool(options.get("control_after_generate")) and kind in CONTROL_AFTER_GENERATE_TYPES
            widgets.append((name, control))
    return widgets


def widget_values(node: Mapping[str, Any], node_info: Mapping[str, Any]) -> dict[str, Any]:
    """The UI node's widget values by input name (control_after_generate values dropped)."""
    raw = node.get("widgets_values")
    if isinstance(raw, dict):  # some extensions save widgets_values as a {name: value} dict
        return {name: raw[name] for name, _ in widget_names(node_info) if name in raw}
    raw = list(raw or [])
    values: dict[str, Any] = {}
    index = 0
    for name, control in widget_names(node_info):
        if index >= len(raw):
            break
        values[name] = raw[index]
        index += 2 if control else 1
    return values


def to_api_prompt(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, dict]:
    """Convert a UI-format workflow into an API prompt `{id: {"class_type", "inputs", "_meta"}}`.

    `object_info` is `/object_info` of the server that will run it (only the classes used are needed).
    Raises WorkflowError for unknown node types, links to missing nodes, or widgets without a value.
    """
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("workflows with subgraphs are not supported by this converter")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {}
    for link in workflow["links"]:
        if isinstance(link, Mapping):  # newer serialisation: objects
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link.get("type")]
        links[link[0]] = link

    def source_of(link_id: int, seen: frozenset = frozenset()) -> tuple[str, Any]:
        """('link', [node id, slot]) or ('value', v) for what feeds a link, through reroutes/bypasses."""
        if link_id not in links:
            raise WorkflowError(f"link {link_id} is used by a node input but missing from 'links'")
        if link_id in seen:
            raise WorkflowError(f"link {link_id} is part of a cycle of reroutes / bypassed nodes")
        _, origin_id, origin_slot, _, _, link_type = links[link_id]
        origin = nodes.get(origin_id)
        if origin is None:
            raise WorkflowError(f"link {link_id} comes from node {origin_id}, which is not in the workflow")
        origin_type = origin["type"]
        if origin_type in REROUTE_TYPES:
            upstream = _linked_inputs(origin)
            if not upstream:
                raise WorkflowError(f"Reroute node {origin_id} has no input link")
            return source_of(upstream[0][1], seen | {link_id})
        if origin_type in PRIMITIVE_TYPES:
            values = origin.get("widgets_values") or []
            if not values:
                raise WorkflowError(f"PrimitiveNode {origin_id} has no value")
            return "value", values[0]
        if origin.get("mode") == MODE_BYPASSED:
            for name, upstream_link in _linked_inputs(origin):
                upstream_type = next(i.get("type") for i in origin["inputs"] if i["name"] == name)
                if upstream_type == link_type:
                    return source_of(upstream_link, seen | {link_id})
            raise WorkflowError(f"bypassed node {origin_id} ({origin_type}) has no {link_type} input to pass through")
        if origin.get("mode") == MODE_MUTED:
            raise WorkflowError(f"node {origin_id} ({origin_type}) is muted but its output is used")
        return "link", [str(origin_id), origin_slot]

    prompt: dict[str, dict] = {}
    for node_id, node in sorted(nodes.items(), key=lambda item: item[1].get("order", 0)):
        class_type = node["type"]
        if class_type in NOTE_TYPES | REROUTE_TYPES | PRIMITIVE_TYPES:
            continue
        if node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            continue
        info = object_info.get(class_type)
        if info is None:
            raise WorkflowError(f"node {node_id} has type {class_type!r}, which the server does not know (missing custom node?)")
        inputs: dict[str, Any] = dict(widget_values(node, info))
        for name, link_id in _linked_inputs(node):
            kind, value = source_of(link_id)
            inputs[name] = value
        missing = [
            name for name in (info.get("input_order", {}).get("required") or list(info.get("input", {}).get("required", {})))
            if name not in inputs
        ]
        if missing:
            raise WorkflowError(f"node {node_id} ({class_type}) has no value or link for required input(s) {missing}")
        title = node.get("title") or info.get("display_name") or class_type
        prompt[str(node_id)] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
    return prompt


def nodes_of_type(prompt: Mapping[str, Mapping[str, Any]], class_type: str) -> list[str]:
    """Ids of the API prompt's nodes of `class_type`, in id order."""
    return sorted((node_id for node_id, node in prompt.items() if node["class_type"] == class_type), key=_id_key)


def saves_by_branch(prompt: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """SaveImage node ids by branch: 'edited' (its sampler's model comes from a UCE node) or 'unedited'."""
    branches = {}
    for save_id in nodes_of_type(prompt, "SaveImage"):
        decode = prompt[save_id]["inputs"]["images"][0]
        sampler = prompt[decode]["inputs"]["samples"][0]
        model_source = prompt[sampler]["inputs"]["model"][0]
        branches["edited" if prompt[model_source]["class_type"] in UCE_CLASSES else "unedited"] = save_id
    return branches


def set_inputs(prompt: dict, class_type: str, **values: Any) -> dict:
    """Set `values` on every node of `class_type` whose inputs hold those names (not links); returns prompt.

    For test/demo overrides of a derived prompt (checkpoint name, sizes, steps …). Raises
    WorkflowError if no node of that type exists.
    """
    ids = nodes_of_type(prompt, class_type)
    if not ids:
        raise WorkflowError(f"no {class_type} node in the prompt")
    for node_id in ids:
        inputs = prompt[node_id]["inputs"]
        for name, value in values.items():
            if name in inputs and not _is_link(inputs[name]):
                inputs[name] = value
    return prompt


def derive_prompt(workflow_path: str | Path, object_info: Mapping[str, Any]) -> dict:
    """load_workflow + to_api_prompt, returning a fresh dict the caller may change."""
    return copy.deepcopy(to_api_prompt(load_workflow(workflow_path), object_info))


def _linked_inputs(node: Mapping[str, Any]) -> list[tuple[str, int]]:
    return [(item["name"], item["link"]) for item in node.get("inputs") or [] if item.get("link") is not None]


def _input_kind(spec: Any) -> tuple[str, dict]:
    if not isinstance(spec, (list, tuple)) or not spec:
        return "", {}
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if isinstance(kind, (list, tuple)):
        return "COMBO", options
    return str(kind), options


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _id_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def fill_empty(prompt: dict, class_types: tuple[str, ...] | str, name: str, value: Any) -> list[str]:
    """Set input `name` to `value` on nodes of `class_types` where it is an empty string; return their ids.

    E.g. a short preserve list for a CPU test run where the workflow leaves `preserve` empty (the
    built-in list of ~1,700 artists takes minutes to encode on a CPU).
    """
    if isinstance(class_types, str):
        class_types = (class_types,)
    changed = []
    for node_id, node in prompt.items():
        if node["class_type"] in class_types and isinstance(node["inputs"].get(name), str) and not node["inputs"][name].strip():
            node["inputs"][name] = value
            changed.append(node_id)
    return changed


def prune_to(prompt: Mapping[str, Mapping[str, Any]], output_ids: list[str]) -> dict:
    """A copy of `prompt` with only `output_ids` and the nodes they depend on."""
    keep: set[str] = set()
    stack = [str(node_id) for node_id in output_ids]
    while stack:
        node_id = stack.pop()
        if node_id in keep:
            continue
        if node_id not in prompt:
            raise WorkflowError(f"node {node_id} is not in the prompt")
        keep.add(node_id)
        stack.extend(value[0] for value in prompt[node_id]["inputs"].values() if _is_link(value))
    return {node_id: copy.deepcopy(dict(node)) for node_id, node in prompt.items() if node_id in keep}
