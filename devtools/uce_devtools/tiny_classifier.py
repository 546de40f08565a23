"""A tiny random transformers CLIP classifier folder (config.json, model.safetensors, tokenizer, preprocessor)
for UCE CLIP Classifier Loader, built offline: the tokenizer files are ComfyUI's own SD1 CLIP tokenizer."""

from __future__ import annotations

from pathlib import Path

NAME = "uce-tiny-clip"


def comfy_tokenizer_dir() -> Path:
    import comfy.sd1_clip

    return Path(comfy.sd1_clip.__file__).parent / "sd1_tokenizer"


def tiny_classifier(models_dir: str | Path, name: str = NAME, seed: int = 0) -> Path:
    """Write ``models_dir``/uce_classifiers/``name``/ (once) and return it."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = Path(models_dir) / "uce_classifiers" / name
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer = CLIPTokenizer.from_pretrained(comfy_tokenizer_dir(), local_files_only=True)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder
