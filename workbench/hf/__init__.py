"""Hugging Face <-> GGUF: conversion as llama.cpp's convert_hf_to_gguf.py, export back to safetensors."""
from workbench.hf.convert import convert_hf
from workbench.hf.export import export_hf

__all__ = ["convert_hf", "export_hf"]
