"""The ranking metrics as a package, for training code: ``evaluate.load`` reads the same file from this folder."""
