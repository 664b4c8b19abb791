"""Procedurally generated data sets (no downloads): see :mod:`cnnviz.data.shapes`."""
