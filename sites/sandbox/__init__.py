"""Everything that handles researcher input: the training child, DP-SGD, the model
inspection child, and the job they read.

Must never import governance, review, the keychain or syft: a child started from here
holds the job it was given and nothing else of the site.
"""
