"""uce_devtools.workflow_api on small hand-made graphs (no server): widget order, control values,
links, converted widgets, notes, reroutes, primitives, bypassed and muted nodes."""

import pytest
from uce_devtools import workflow_api as wf

OBJECT_INFO = {
    "Loader": {
        "input": {"required": {"name": [["a.safetensors", "b.safetensors"], {}]}},
        "input_order": {"required": ["name"]},
    },
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "control_after_generate": True}],
                "steps": ["INT", {"default": 20}],
                "sampler": [["euler", "heun"], {}],
                "text": ["STRING", {"multiline": True}],
                "forced": ["STRING", {"forceInput": True}],
            },
            "optional": {"flag": ["BOOLEAN", {"default": False}], "mode": ["COMBO", {"options": ["x", "y"]}]},
        },
        "input_order": {"required": ["model", "seed", "steps", "sampler", "text", "forced"], "optional": ["flag", "mode"]},
    },
    "Filter": {
        "input": {"required": {"model": ["MODEL", {}], "amount": ["FLOAT", {"default": 1.0}]}},
        "input_order": {"required": ["model", "amount"]},
    },
    "Text": {"input": {"required": {"value": ["STRING", {}]}}, "input_order": {"required": ["value"]}},
}


def node(id_, type_, widgets=(), inputs=(), mode=0, order=0):
    return {
        "id": id_, "type": type_, "mode": mode, "order": order, "pos": [0, 0], "size": [100, 100],
        "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
        "outputs": [], "widgets_values": list(widgets), "properties": {},
    }


def test_widget_names_follow_input_order_with_control_values():
    assert wf.widget_names(OBJECT_INFO["Sampler"]) == [
        ("seed", True), ("steps", False), ("sampler", False), ("text", False), ("flag", False), ("mode", False),
    ]


def test_links_widgets_and_trailing_extension_values():
    workflow = {
        "nodes": [
            node(1, "Loader", ["b.safetensors"], order=0),
            node(2, "Text", ["from a text node"], order=1),
            node(3, "Sampler", [7, "randomize", 3, "heun", "hello", True, "y", "extra widget of an extension"],
                 inputs=[("model", "MODEL", 1), ("forced", "STRING", 2)], order=2),
            node(4, "Note", ["a note"]),
        ],
        "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "STRING"]],
    }
    prompt = wf.to_api_prompt(workflow, OBJECT_INFO)
    assert set(prompt) == {"1", "2", "3"}  # the Note is left out
    assert prompt["3"]["inputs"] == {
        "model": ["1", 0], "seed": 7, "steps": 3, "sampler": "heun", "text": "hello", "forced": ["2", 0],
        "flag": True, "mode": "y",
    }
    assert prompt["1"]["inputs"] == {"name": "b.safetensors"}


def test_converted_widget_takes_the_link():
    workflow = {
        "nodes": [
            node(1, "Loader", ["a.safetensors"]),
            node(2, "Text", ["linked text"]),
            node(3, "Sampler", [1, "fixed", 2, "euler", "widget text", False, "x"],
                 inputs=[("model", "MODEL", 1), ("forced", "STRING", 2), ("text", "STRING", 3)]),
        ],
        "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "STRING"], [3, 2, 0, 3, 2, "STRING"]],
    }
    workflow["nodes"][2]["inputs"][2]["widget"] = {"name": "text"}
    inputs = wf.to_api_prompt(workflow, OBJECT_INFO)["3"]["inputs"]
    assert inputs["text"] == ["2", 0] and inputs["forced"] == ["2", 0]
    assert inputs["steps"] == 2 and inputs["mode"] == "x"  # the other widget values keep their places


def test_reroute_primitive_bypass_and_mute():
    workflow = {
        "nodes": [
            node(1, "Loader", ["a.safetensors"]),
            node(2, "Reroute", inputs=[("", "*", 1)]),
            node(3, "Filter", [0.5], inputs=[("model", "MODEL", 2)], mode=4),  # bypassed: passes MODEL through
            node(4, "PrimitiveNode", ["from a primitive", "fixed"]),
            node(5, "Sampler", [1, "fixed", 2, "euler", "t", False, "x"],
                 inputs=[("model", "MODEL", 3), ("forced", "STRING", 4)]),
            node(6, "Text", ["muted"], mode=2),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 5, 0, "MODEL"], [4, 4, 0, 5, 1, "STRING"]],
    }
    prompt = wf.to_api_prompt(workflow, OBJECT_INFO)
    assert set(prompt) == {"1", "5"}
    assert prompt["5"]["inputs"]["model"] == ["1", 0]
    assert prompt["5"]["inputs"]["forced"] == "from a primitive"


def test_unknown_node_type_and_missing_values_are_errors():
    with pytest.raises(wf.WorkflowError, match="missing custom node"):
        wf.to_api_prompt({"nodes": [node(1, "Nope")], "links": []}, OBJECT_INFO)
    with pytest.raises(wf.WorkflowError, match="no value or link for required input"):
        wf.to_api_prompt({"nodes": [node(1, "Filter", [])], "links": []}, OBJECT_INFO)


def test_prune_fill_and_set_inputs():
    prompt = {
        "1": {"class_type": "Loader", "inputs": {"name": "a"}},
        "2": {"class_type": "Filter", "inputs": {"model": ["1", 0], "amount": 1.0}},
        "3": {"class_type": "Text", "inputs": {"value": ""}},
    }
    assert set(wf.prune_to(prompt, ["2"])) == {"1", "2"}
    assert wf.fill_empty(prompt, "Text", "value", "filled") == ["3"] and prompt["3"]["inputs"]["value"] == "filled"
    wf.set_inputs(prompt, "Filter", amount=0.25, model="not a link")  # links are never overwritten
    assert prompt["2"]["inputs"] == {"model": ["1", 0], "amount": 0.25}


def test_saves_by_branch_follows_each_image_back_to_its_model():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
        "2": {"class_type": "UCEEraseConcepts", "inputs": {"model": ["1", 0]}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["1", 0]}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["2", 0]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["5", 0]}},
    }
    assert wf.saves_by_branch(prompt) == {"edited": "7", "unedited": "8"}
