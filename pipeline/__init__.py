"""Shared ground of the pipeline's stages: configuration, logging and command-line plumbing."""
