"""Model loading: pre-trained weights from local Hugging Face folders (nothing is downloaded).

`resnet` (transformers' Flax ResNet, and a pure forward pass over block
ranges), `stable_diffusion` (diffusers' Flax Stable Diffusion 1.x) and
`huggingface` (the helpers they share). Modules that import transformers or
diffusers do so inside their loading functions.
"""
