"""Apply a trained run to new face images, folders and videos (`pipeline predict`, `Predictor`)."""
