"""Development support for the UCE node pack: a real in-process ComfyUI and tiny random models."""
