"""Local pattern matching: RootSIFT keypoints, mutual ratio-test matches and a geometric check.

A global embedding cannot tell apart individuals whose identity lies in a few spots, stripes
or scars; keypoints matched under one geometric transform can (HotSpotter, WildFusion). The
inlier count of a verified match is the local score. Nothing here imports torch or faiss.
"""
