"""Faiss-backed image retrieval classifier for individual re-identification.

Importing the package does no work and loads no heavy library: the CLIs must be able to set
OpenMP environment variables (see ``retrieval.device.prepare_environment``) before torch or
faiss load.
"""

__version__ = "0.1.0"
