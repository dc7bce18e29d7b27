"""lplr_tf: train Keras models and measure why gradient descent converges fast."""
