"""The reproduction study (``psft study``) and the run plots (``psft plot``), as library code."""
