"""CT volume loading, segmentation engines, quantification, synthetic CT.

Knows nothing of networking: everything here works from files on disk.
"""
