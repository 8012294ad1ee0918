"""Orchestrator: durable image and video generation jobs on FLUX and ComfyUI."""

__version__ = "0.1.0"
