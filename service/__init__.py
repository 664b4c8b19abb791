"""The cnnviz HTTP service."""
