"""The predictive score: features, a calibrated model, training and serving."""
