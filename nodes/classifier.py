"""A zero-shot CLIP image classifier (transformers CLIPModel, safetensors only, no hub access) and its loader node.

Models live in ComfyUI's ``models/uce_classifiers/<name>/``: a folder with the Hugging Face files of a
CLIP model (config.json, model.safetensors, the tokenizer and preprocessor files), e.g. those of
openai/clip-vit-base-patch32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import folder_paths
import torch
from comfy_api.latest import io

from . import inputs
from .input_checks import InputError

FOLDER = "uce_classifiers"
CLASSIFIER_TYPE = "UCE_CLASSIFIER"
Classifier = io.Custom(CLASSIFIER_TYPE)
REQUIRED_FILES = ("config.json", "model.safetensors")
# The label each attribute is scored against: the form of the debias edit's attribute prompts.
LABEL_TEMPLATE = "image of {}"


def register_folder() -> None:
    """models/uce_classifiers as a ComfyUI model folder (extra_model_paths.yaml may add more)."""
    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


def classifier_names() -> list[str]:
    """Subfolders of every uce_classifiers folder that hold config.json and model.safetensors."""
    register_folder()
    names = []
    for root in folder_paths.get_folder_paths(FOLDER):
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            if all(os.path.isfile(os.path.join(root, name, f)) for f in REQUIRED_FILES):
                names.append(name)
    return list(dict.fromkeys(names))


def classifier_path(name: str) -> str:
    for root in folder_paths.get_folder_paths(FOLDER):
        path = os.path.join(root, name)
        if all(os.path.isfile(os.path.join(path, f)) for f in REQUIRED_FILES):
            return path
    raise InputError(
        "classifier_name",
        f"no classifier {name!r}: put a folder with {', '.join(REQUIRED_FILES)} and the tokenizer and "
        f"preprocessor files in models/{FOLDER}/",
    )


@dataclass
class CLIPClassifier:
    """Zero-shot CLIP: each image gets the label whose text embedding it is closest to (argmax)."""

    name: str
    model: object
    processor: object

    def labels(self, attributes: list[str]) -> list[str]:
        return [LABEL_TEMPLATE.format(a) for a in attributes]

    @torch.no_grad()
    def classify(self, images: torch.Tensor, attributes: list[str]) -> list[int]:
        """``images``: a ComfyUI IMAGE [B, H, W, 3] in 0..1; one attribute index per image."""
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        batch = self.processor(text=self.labels(attributes), images=list(pixels), return_tensors="pt",
                               padding=True)
        logits = self.model(**batch).logits_per_image
        return logits.argmax(dim=-1).tolist()


def load_classifier(name: str) -> CLIPClassifier:
    """The CLIP model and processor in models/uce_classifiers/<name>/, from local safetensors only."""
    from transformers import CLIPModel, CLIPProcessor

    path = classifier_path(name)
    model = CLIPModel.from_pretrained(path, use_safetensors=True, local_files_only=True)
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    return CLIPClassifier(name, model.eval(), processor)


class UCEClassifierLoader(io.ComfyNode):
    """Load a zero-shot CLIP classifier for UCE Debias (calibrated)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UCEClassifierLoader",
            display_name="UCE CLIP Classifier Loader",
            category=inputs.CATEGORY,
            description="Loads a Hugging Face CLIP model (transformers, safetensors only, no download) from "
            f"models/{FOLDER}/<name>/ to classify images zero-shot against attribute prompts "
            f"('{LABEL_TEMPLATE.format('<attribute>')}').",
            inputs=[
                io.Combo.Input(
                    "classifier_name",
                    options=classifier_names(),
                    tooltip=f"A folder in models/{FOLDER}/ with config.json, model.safetensors and the "
                    "tokenizer and preprocessor files of a CLIP model (e.g. openai/clip-vit-base-patch32).",
                ),
            ],
            outputs=[
                Classifier.Output(
                    display_name="classifier",
                    tooltip="The classifier, for UCE Debias (calibrated).",
                ),
            ],
        )

    @classmethod
    def execute(cls, classifier_name) -> io.NodeOutput:
        return io.NodeOutput(load_classifier(classifier_name))
